import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { memoQemuScan, runningPid } from '../processes.ts';
import { listVmsPayload } from '../schemas.ts';
import { listRecords, vmPaths, type RecordProblem } from '../state.ts';
import { viewOf } from '../vm-ops.ts';
import { findAddresses, loadStrategies } from '../discovery.ts';

/**
 * This host's VMs. Liveness from /proc only (no QMP round trip per VM), and addresses asked passively (no
 * ARP probe sweep, short guest-agent waits, a lease file or neighbour table read once per list), so a long
 * list stays fast.
 */
export default defineHandler(listVmsPayload, qemuOptionsSchema, async (_payload, ctx) => {
  const unusable: RecordProblem[] = [];
  const records = await listRecords(ctx.options.stateDir, unusable);
  const strategies = await loadStrategies(ctx.options, ctx);
  // One memo for the whole list: a lease file or a neighbour table is read once, not once per running VM.
  const shared = new Map<string, Promise<unknown>>();
  // And one /proc scan, made only if some VM's pidfile names no live QEMU (a stopped VM, a lost pidfile).
  const scan = memoQemuScan();
  const vms = await Promise.all(
    records.map(async (record) => {
      const pid = await runningPid(vmPaths(ctx.options.stateDir, record.id).pidfile, record.id, scan);
      const addresses =
        pid === undefined ? [] : (await findAddresses(ctx.options, strategies, record, { wait: false, timeoutMs: 0, includeLinkLocal: false, passive: true, shared }, ctx)).addresses;
      return { ...viewOf(record, pid === undefined ? 'stopped' : 'running', pid), addresses };
    }),
  );
  // A VM whose vm.json cannot be used is not listed as a VM (nothing in it can be trusted), but is named.
  return { host: ctx.host.id, vms, ...(unusable.length > 0 && { unusable }) };
});
