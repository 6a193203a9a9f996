/** create-vm's NO_CAPACITY: what was asked and what is free, and a VM larger than the host's total. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { noRoomFor } from '../../../plugins/qemu-backend/handlers/create-vm.ts';

const limits = { maxVms: 4, maxTotalMemoryMiB: 1024, maxMemoryMiB: 8192, maxVcpus: 2 };
const vms = (...memory: number[]) => memory.map((memoryMiB) => ({ memoryMiB }));

test('capacity — a VM that fits is let through; one that does not is NO_CAPACITY saying what was asked and what is free', () => {
  assert.equal(noRoomFor(896, vms(128), limits, 'node2'), undefined);
  // Before: "host node2 is full: 1/4 VMs, 128/1024 MiB in use", for a host with 896 MiB free.
  const tooBig = noRoomFor(1000, vms(128), limits, 'node2');
  assert.equal(tooBig?.code, 'NO_CAPACITY');
  assert.equal(tooBig?.message, 'host node2 has no room for 1000 MiB: 128 of 1024 MiB in use (896 free)');
  assert.deepEqual(tooBig?.details, { vms: 1, memoryMiB: 128, askedMiB: 1000, maxVms: 4, maxTotalMemoryMiB: 1024 });
  assert.equal(noRoomFor(16, vms(16, 16, 16, 16), limits, 'node2')?.message, 'host node2 is full: it has 4 of 4 VMs (limits.maxVms)');
});

test('capacity — more memory than the host may ever give its VMs says so (maxMemoryMiB above maxTotalMemoryMiB let it through)', () => {
  const never = noRoomFor(2000, vms(), limits, 'node2');
  assert.equal(never?.code, 'NO_CAPACITY');
  assert.equal(never?.message, 'host node2 can never hold a 2000 MiB VM: all its VMs together may have 1024 MiB (limits.maxTotalMemoryMiB)');
});
