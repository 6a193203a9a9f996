/**
 * On agent start: VMs whose QEMU still runs are simply picked up again (their state lives in QEMU and on
 * disk, not in the agent); VMs marked autostart that are not running are started; VMs that were meant to
 * run but died without autostart are recorded as stopped.
 */
import type { PluginLogger } from '../../core/plugin-api.ts';
import type { QemuOptions } from './options.ts';
import { listRecords, type RecordProblem } from './state.ts';
import { memoQemuScan } from './processes.ts';
import { atMost } from './at-most.ts';
import { queryStatus, setDesired, startVm } from './vm-ops.ts';

/** QEMU starts at once. */
const STARTS_AT_ONCE = 4;

export interface ReconcileSummary {
  reattached: string[];
  autostarted: string[];
  markedStopped: string[];
  failed: { vm: string; error: string }[];
}

export async function reconcileVms(options: QemuOptions, log: PluginLogger): Promise<ReconcileSummary> {
  const summary: ReconcileSummary = { reattached: [], autostarted: [], markedStopped: [], failed: [] };
  const unusable: RecordProblem[] = [];
  const records = await listRecords(options.stateDir, unusable);
  // A vm.json that is not a record of its VM is left alone (its values would reach QEMU): listed, not fatal.
  for (const { vm, file, problem } of unusable) summary.failed.push({ vm, error: `the record ${file} cannot be used: ${problem}` });
  // One /proc scan for every VM whose pidfile names no live QEMU, not one each.
  const scan = memoQemuScan();
  // Every VM is looked at at once (a stuck monitor costs its own few seconds only), but QEMU is started a few
  // at a time: an agent coming back to fifty autostart VMs must not start fifty QEMUs at once.
  const starting = atMost(STARTS_AT_ONCE);
  await Promise.all(
    records.map(async (record) => {
      try {
        // A short check (queryStatus bounds each QMP step): a stuck monitor must not hold the agent's start.
        const { pid, qmpStatus } = await queryStatus(options, record, scan);
        if (pid !== undefined) {
          if (qmpStatus === undefined) log.warn({ vm: record.id, pid }, 'VM process runs but its QMP socket does not answer');
          summary.reattached.push(record.id);
        } else if (record.autostart) {
          await starting(() => startVm(options, record));
          if (record.desired !== 'running') await setDesired(options, record, 'running');
          summary.autostarted.push(record.id);
        } else if (record.desired === 'running') {
          await setDesired(options, record, 'stopped');
          summary.markedStopped.push(record.id);
        }
      } catch (error) {
        summary.failed.push({ vm: record.id, error: (error as Error).message });
      }
    }),
  );
  log.info({ ...summary, total: records.length }, 'reconciled VMs with running QEMU processes');
  return summary;
}
