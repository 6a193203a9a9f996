/** Error codes qemu-backend's handlers throw (declared in index.ts, documented in docs/ERRORS.md). */
export const qemuErrors = {
  IMAGE_NOT_FOUND: { message: 'no base image with this name', retryable: false },
  IMAGE_INVALID: { message: 'the base image cannot be used', retryable: false },
  VM_NOT_FOUND: { message: 'no VM with this id on this host', retryable: false },
  VM_NOT_READY: { message: 'the VM is still being created', retryable: true },
  VM_RECORD_INVALID: { message: "the VM's record (vm.json) cannot be read or is not a record of this VM", retryable: false },
  REQUEST_ID_REUSED: { message: 'a create-vm request id that made a VM before came again with other settings, or after that VM was deleted', retryable: false },
  VM_LIMIT: { message: 'the request is beyond what this host allows for one VM', retryable: false },
  QEMU_FAILED: { message: 'QEMU failed to start or to do what was asked', retryable: true },
  QMP_FAILED: { message: 'the QEMU monitor (QMP) did not answer as expected', retryable: true },
  NETWORK_FAILED: { message: 'the VM network device could not be set up', retryable: true },
  IP_NOT_FOUND: { message: 'no address for the VM was found before the timeout', retryable: true },
} as const;

export type QemuErrorCode = keyof typeof qemuErrors;

export function qemuError(code: QemuErrorCode | 'NO_CAPACITY', message: string, details?: unknown): Error & { code: string; details?: unknown } {
  return Object.assign(new Error(message), { code, details });
}
