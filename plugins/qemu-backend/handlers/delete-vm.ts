import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { vmRefPayload } from '../schemas.ts';
import { readRecord, removeVmFolder } from '../state.ts';
import { checkOwner, refuseWhileCreating, removeLeftover, stopVm } from '../vm-ops.ts';

export default defineHandler(vmRefPayload, qemuOptionsSchema, async ({ vm }, ctx) => {
  checkOwner(vm, ctx.host.id);
  const record = await readRecord(ctx.options.stateDir, vm);
  if (!record) {
    // Not "already deleted" while create-vm is still making it: it would be running a moment later.
    await refuseWhileCreating(ctx.options, vm);
    // What a create that died left (a folder without vm.json, perhaps a QEMU and a tap): the delete the
    // caller asks for removes it, rather than leave it to the sweeper.
    if (await removeLeftover(ctx.options, vm)) return { vm, deleted: true, already: false, hint: 'the VM was never finished (no vm.json): what its create left was removed' };
    return { vm, deleted: false, already: true, hint: 'no such VM on this host (already deleted?)' };
  }
  ctx.progress('stopping', { vm });
  // Deleting destroys the disk anyway: no point waiting for the guest to shut down cleanly.
  const stopped = await stopVm(ctx.options, record, { force: true, timeoutMs: 0 });
  await removeVmFolder(ctx.options.stateDir, vm);
  ctx.log.info({ vm, stopped }, 'VM deleted');
  return { vm, deleted: true, already: false, stopped };
});
