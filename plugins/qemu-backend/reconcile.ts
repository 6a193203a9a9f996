/**
 * On agent start: VMs whose QEMU still runs are simply picked up again (their state lives in QEMU and on
 * disk, not in the agent); VMs marked autostart that are not running are started; VMs that were meant to
 * run but died without autostart are recorded as stopped.
 */
import type { PluginLogger } from '../../core/plugin-api.ts';
import type { QemuOptions } from './options.ts';
import { runningPid } from './processes.ts';
import { withQmp } from './qmp.ts';
import { listRecords, vmPaths } from './state.ts';
import { setDesired, startVm } from './vm-ops.ts';

export interface ReconcileSummary {
  reattached: string[];
  autostarted: string[];
  markedStopped: string[];
  failed: { vm: string; error: string }[];
}

/**
 * The health check of a VM found running is only for the log, so each of its QMP steps (greeting,
 * capabilities, query-status) waits at most this long: the agent's start waits for the reconcile, and a
 * stuck monitor used to hold it for QMP's full timeouts (up to 20 s); now at most 3 s, VMs in parallel.
 */
const MONITOR_CHECK_MS = 1_000;

export async function reconcileVms(options: QemuOptions, log: PluginLogger): Promise<ReconcileSummary> {
  const summary: ReconcileSummary = { reattached: [], autostarted: [], markedStopped: [], failed: [] };
  const records = await listRecords(options.stateDir);
  await Promise.all(
    records.map(async (record) => {
      const paths = vmPaths(options.stateDir, record.id);
      try {
        const pid = await runningPid(paths.pidfile, record.id);
        if (pid !== undefined) {
          const status = await withQmp(paths.qmp, (qmp) => qmp.execute<{ status: string }>('query-status', undefined, MONITOR_CHECK_MS), MONITOR_CHECK_MS).catch(
            () => undefined,
          );
          if (!status) log.warn({ vm: record.id, pid }, 'VM process runs but its QMP socket does not answer');
          summary.reattached.push(record.id);
        } else if (record.autostart) {
          await startVm(options, record);
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
