import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { vmRefPayload } from '../schemas.ts';
import { requireRecord, setDesired, startVm, viewOf } from '../vm-ops.ts';

export default defineHandler(vmRefPayload, qemuOptionsSchema, async ({ vm }, ctx) => {
  const record = await requireRecord(ctx.options, vm, ctx.host);
  ctx.progress('starting', { vm });
  const { pid, already } = await startVm(ctx.options, record);
  const updated = await setDesired(ctx.options, record, 'running');
  return { ...viewOf(updated, 'running', pid), already, hint: already ? 'the VM was already running' : undefined };
});
