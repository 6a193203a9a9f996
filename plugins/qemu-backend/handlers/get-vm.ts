import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { vmRefPayload } from '../schemas.ts';
import { vmPaths } from '../state.ts';
import { queryStatus, requireRecord, viewOf } from '../vm-ops.ts';

export default defineHandler(vmRefPayload, qemuOptionsSchema, async ({ vm }, ctx) => {
  const record = await requireRecord(ctx.options, vm);
  const status = await queryStatus(ctx.options, record);
  return { ...viewOf(record, status.state, status.pid), qmpStatus: status.qmpStatus ?? null, serialLog: vmPaths(ctx.options.stateDir, vm).serialLog };
});
