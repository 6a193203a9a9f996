/**
 * On agent start: VMs whose QEMU still runs are simply picked up again (their state lives in QEMU and on
 * disk, not in the agent); VMs marked autostart that are not running are started; VMs that were meant to
 * run but died without autostart are recorded as stopped. A QEMU still running for a folder without
 * vm.json (a create that never finished) is ended. Claims on VM ids left by takers that were killed (the
 * agent before this one) are cleared.
 */
import { readdir } from 'node:fs/promises';
import type { PluginLogger } from '../../core/plugin-api.ts';
import { removeTap, tapName } from './network.ts';
import type { QemuOptions } from './options.ts';
import { VM_ID_PATTERN } from './schemas.ts';
import { hasRecordFile, listRecords, vmPaths, type RecordProblem } from './state.ts';
import { killQemu, memoQemuScan, runningPid, type QemuScan } from './processes.ts';
import { atMost } from './at-most.ts';
import { pruneStaleClaims } from './vm-claim.ts';
import { queryStatus, setDesired, startVm } from './vm-ops.ts';

/** QEMU starts at once. */
const STARTS_AT_ONCE = 4;

export interface ReconcileSummary {
  reattached: string[];
  autostarted: string[];
  markedStopped: string[];
  /** Folders without vm.json whose QEMU was still running, and was ended (endHalfMade). */
  endedHalfMade: string[];
  /** Stale entries removed from `<stateDir>/.claims/` (vm-claim.ts). */
  staleClaimsRemoved: number;
  failed: { vm: string; error: string }[];
}

export async function reconcileVms(options: QemuOptions, log: PluginLogger, agentStartedAt: number): Promise<ReconcileSummary> {
  const summary: ReconcileSummary = { reattached: [], autostarted: [], markedStopped: [], endedHalfMade: [], staleClaimsRemoved: 0, failed: [] };
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
  await endHalfMade(options, scan, summary);
  // Only an entry's next holder would remove it otherwise: one of a VM id nobody claims again would stay.
  summary.staleClaimsRemoved = await pruneStaleClaims(options.stateDir, agentStartedAt).catch((error: Error) => {
    log.warn({ err: error.message }, 'stale claims on VM ids could not be cleared');
    return 0;
  });
  log.info({ ...summary, total: records.length }, 'reconciled VMs with running QEMU processes');
  return summary;
}

/**
 * A folder without vm.json is a create that never finished: nobody was told the VM exists, and no command
 * reaches it (VM_NOT_FOUND). Before the agent takes messages no create of its own can be at work, so a QEMU
 * still running there (its agent died after starting it, or an any-host create that then ran on another
 * host) only holds memory and its tap: both go. The folder stays, for a rerun of its request, delete-vm or
 * the sweeper, which decide about its disk.
 */
async function endHalfMade(options: QemuOptions, scan: QemuScan, summary: ReconcileSummary): Promise<void> {
  const names = await readdir(options.stateDir).catch(() => [] as string[]);
  for (const id of names.filter((name) => VM_ID_PATTERN.test(name))) {
    const paths = vmPaths(options.stateDir, id);
    // Any vm.json, usable or not, is a VM's: its QEMU is left alone (an unusable record is listed as failed).
    if (await hasRecordFile(options.stateDir, id)) continue;
    try {
      if ((await runningPid(paths.pidfile, id, scan)) === undefined) continue;
      await killQemu(paths.pidfile, id, 5_000);
      await removeTap(options.ipBinary, tapName(options.tapPrefix, id)).catch(() => undefined);
      summary.endedHalfMade.push(id);
    } catch (error) {
      summary.failed.push({ vm: id, error: `the QEMU of a create that never finished could not be ended: ${(error as Error).message}` });
    }
  }
}
