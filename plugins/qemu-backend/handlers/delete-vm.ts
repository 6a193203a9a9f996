import { stat } from 'node:fs/promises';
import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { vmRefPayload } from '../schemas.ts';
import { readRecord, removeVmFolder, vmPaths, type VmRecord } from '../state.ts';
import { deletedRecord, recordDeleted } from '../tombstones.ts';
import { qemuError } from '../errors.ts';
import { claimWaitMs, withVmClaim } from '../vm-claim.ts';
import { checkOwner, readCreatingMark, refuseWhileCreating, removeLeftover, stopVm } from '../vm-ops.ts';

export default defineHandler(vmRefPayload, qemuOptionsSchema, async ({ vm }, ctx) => {
  checkOwner(vm, ctx.host.id);
  // Read again after the mark: the create may have written vm.json and dropped its mark in between.
  let record: VmRecord | undefined;
  try {
    record = (await readRecord(ctx.options.stateDir, vm)) ?? (await refuseWhileCreating(ctx.options, vm, ctx.host), await readRecord(ctx.options.stateDir, vm));
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'VM_RECORD_INVALID') throw error;
    // Nothing in an unusable record is trusted: the VM is removed by its id, as a leftover is (its QEMU by
    // name and pidfile, its tap by the id's letters, its folder). Its request id is unknown, but its VM id is
    // not given out again.
    await remember(undefined);
    await removeLeftover(ctx.options, vm);
    return { vm, deleted: true, already: false, hint: `its record could not be used (${(error as Error).message}): what the VM left was removed` };
  }
  if (record) return deleteRecorded(record);
  // What a create that died left (a folder without vm.json, perhaps a QEMU and a tap): the delete the caller
  // asks for removes it, rather than leave it to the sweeper. The tombstone first, as for a VM: a removal
  // cut short (the agent killed, a busy mount) must not leave the id free for a new VM.
  if (await isDirectory(vmPaths(ctx.options.stateDir, vm).dir)) {
    // Under the claim on the id (vm-claim.ts), and judged again there: a create of the request that left it
    // may have taken the folder over meanwhile (then its mark holds, or its VM is recorded by now).
    const claimed = await withVmClaim(ctx.options.stateDir, vm, 'delete-vm', { waitMs: claimWaitMs(ctx.message.deadline, CLAIM_WAIT_MS), signal: ctx.signal }, async () => {
      const now = await readRecord(ctx.options.stateDir, vm);
      if (now) return deleteRecorded(now);
      await refuseWhileCreating(ctx.options, vm, ctx.host);
      if (!(await isDirectory(vmPaths(ctx.options.stateDir, vm).dir))) return undefined;
      await remember((await readCreatingMark(ctx.options, vm))?.request);
      await removeLeftover(ctx.options, vm);
      return { vm, deleted: true, already: false, hint: 'the VM was never finished (no vm.json): what its create left was removed' };
    });
    if (!claimed.ran) {
      throw qemuError('VM_NOT_READY', `VM "${vm}" is being worked on by ${claimed.heldBy}; send the delete again shortly`, { vm, heldBy: claimed.heldBy });
    }
    if (claimed.value) return claimed.value;
    // Removed meanwhile by whoever held the claim: answered below as a VM that is gone.
  }
  const deleted = await deletedRecord(ctx.options.stateDir, vm);
  if (deleted) return { vm, deleted: false, already: true, deletedAt: deleted.deletedAt, hint: `deleted already, at ${deleted.deletedAt}` };
  return { vm, deleted: false, already: true, hint: 'no such VM on this host (already deleted?)' };

  /**
   * The tombstone (tombstones.ts). One that cannot be written (a full disk, which deleting VMs is meant to
   * relieve) does not stop the delete: the id could then come back, as before tombstones, and the log says so.
   */
  async function remember(request: string | undefined) {
    await recordDeleted(ctx.options.stateDir, vm, request).catch((error: unknown) =>
      ctx.log.warn({ vm, reason: (error as Error).message }, 'the deleted VM\'s tombstone could not be written: its create sent again would make a new VM under its id'),
    );
  }

  async function deleteRecorded(found: VmRecord) {
    ctx.progress('stopping', { vm });
    // Deleting destroys the disk anyway: no point waiting for the guest to shut down cleanly.
    const stopped = await stopVm(ctx.options, found, { force: true, timeoutMs: 0 });
    // Before the folder goes: an agent that dies in between leaves a tombstone beside a VM, which is harmless
    // (the VM answers its own create first, and its id is taken anyway), never a deleted VM without one.
    await remember(found.request);
    await removeVmFolder(ctx.options.stateDir, vm);
    ctx.log.info({ vm, stopped }, 'VM deleted');
    return { vm, deleted: true, already: false, stopped };
  }
});

/** As long as create-vm waits for a claim (create-vm.ts): more than a removal under one takes. */
const CLAIM_WAIT_MS = 15_000;

const isDirectory = (path: string): Promise<boolean> => stat(path).then((info) => info.isDirectory(), () => false);
