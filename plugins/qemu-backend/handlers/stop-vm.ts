import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { stopVmPayload } from '../schemas.ts';
import { requireRecord, setDesired, stopVm, viewOf } from '../vm-ops.ts';

export default defineHandler(stopVmPayload, qemuOptionsSchema, async ({ vm, force, timeoutMs }, ctx) => {
  const record = await requireRecord(ctx.options, vm, ctx.host);
  ctx.progress('stopping', { vm, force });
  const how = await stopVm(ctx.options, record, { force, timeoutMs: timeoutMs ?? ctx.options.stopTimeoutMs });
  const updated = await setDesired(ctx.options, record, 'stopped');
  return { ...viewOf(updated, 'stopped', undefined), how, already: how === 'already-stopped', hint: how === 'already-stopped' ? 'the VM was not running' : undefined };
});
