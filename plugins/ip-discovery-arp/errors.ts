/** Error codes ip-discovery-arp throws (declared in index.ts; rows belong in docs/ERRORS.md). */
import { CloudletError } from '../../core/plugin-api.ts';

export const arpErrors = {
  ARP_NO_BRIDGE: { message: 'no bridge to read neighbours on: neither the plugin option nor the VM names one', retryable: false },
  ARP_READ_FAILED: { message: 'the neighbour table or the bridge addresses could not be read', retryable: true },
  ARP_PROBE_INVALID: { message: 'the configured probe range is not inside a subnet of the bridge', retryable: false },
} as const;

export type ArpErrorCode = keyof typeof arpErrors;

export function arpError(code: ArpErrorCode, message: string, details?: unknown, cause?: unknown): CloudletError {
  return new CloudletError(code, message, { details, cause, retryable: arpErrors[code].retryable });
}
