import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { vmRefPayload } from '../schemas.ts';
import { vmPaths } from '../state.ts';
import { queryStatus, requireRecord, viewOf } from '../vm-ops.ts';
import { findAddresses, loadStrategies } from '../discovery.ts';

export default defineHandler(vmRefPayload, qemuOptionsSchema, async ({ vm }, ctx) => {
  const record = await requireRecord(ctx.options, vm, ctx.host);
  const status = await queryStatus(ctx.options, record);
  const strategies = await loadStrategies(ctx.options, ctx);
  const { addresses } =
    status.state === 'stopped' ? { addresses: [] } : await findAddresses(ctx.options, strategies, record, { wait: false, timeoutMs: 0, includeLinkLocal: false }, ctx);
  return { ...viewOf(record, status.state, status.pid), addresses, qmpStatus: status.qmpStatus ?? null, serialLog: vmPaths(ctx.options.stateDir, vm).serialLog };
});
