/**
 * Carries out a plan, one finding after another in plan order (processes before the folders and taps they
 * held). A failed step is reported and the run goes on; an aborted run marks the rest `skipped`.
 */
import type { PluginLogger } from '../../core/plugin-api.ts';
import { isExpired } from '../ip-discovery-dnsmasq/leases.ts';
import { powerOffOrphan, reapOrphan, removeBareFolder, removeStrayFile, settleDeadRecord, settleTap, type Dispatch, type StepResult } from './act-orphans.ts';
import { deleteNeighbour, leaseKey, releaseArgv, releaseLease, waitUntilGone } from './lease-table.ts';
import type { SweeperOptions } from './options.ts';
import type { Finding } from './plan.ts';
import type { SweepRow } from './schemas.ts';

export interface ActContext {
  options: SweeperOptions;
  /** This host's id: a tap is named for the VM id of this host with the same letters. */
  hostId: string;
  log: PluginLogger;
  signal: AbortSignal;
  dispatch?: Dispatch;
}

/** How long dnsmasq gets to rewrite its lease file after the releases. */
const RELEASE_SETTLE_MS = 3_000;

export function rowOf(finding: Finding, outcome: SweepRow['outcome'], extra: Pick<SweepRow, 'detail' | 'error'> = {}): SweepRow {
  const row: SweepRow = { job: finding.job, kind: finding.kind, target: finding.target, reason: finding.reason, action: finding.action, step: finding.step, outcome };
  if (extra.detail !== undefined) row.detail = extra.detail;
  if (extra.error !== undefined) row.error = extra.error;
  return row;
}

export async function carryOut(findings: readonly Finding[], context: ActContext): Promise<SweepRow[]> {
  const rows: SweepRow[] = [];
  /** Live leases released: they must be gone from the file once dnsmasq has rewritten it. */
  const released: { index: number; key: string }[] = [];
  for (const finding of findings) {
    if (finding.step === 'none') {
      rows.push(rowOf(finding, 'logged', finding.action === 'log' ? {} : { detail: `"${finding.action}" has no step for ${finding.kind}` }));
      continue;
    }
    if (context.signal.aborted) {
      rows.push(rowOf(finding, 'skipped', { detail: 'the run was aborted first' }));
      continue;
    }
    try {
      const result = await runStep(finding, context);
      rows.push(rowOf(finding, result.outcome, { detail: result.detail }));
      if (finding.kind === 'stale-lease' && result.outcome === 'done' && !isExpired(finding.lease, Date.now())) {
        released.push({ index: rows.length - 1, key: leaseKey(finding.lease) });
      }
    } catch (error) {
      // A row's error carries a documented code: a failed qemu-backend message keeps its own, anything else
      // (an ip or dhcp_release that could not run, EACCES from rm) is SWEEP_ACTION_FAILED, its cause in the text.
      const { code: cause, fromMessage } = error as { code?: unknown; fromMessage?: boolean };
      const code = fromMessage && typeof cause === 'string' ? cause : 'SWEEP_ACTION_FAILED';
      const message = (error as Error).message;
      const text = fromMessage || typeof cause !== 'string' || message.includes(cause) ? message : `${cause}: ${message}`;
      context.log.warn({ kind: finding.kind, target: finding.target, step: finding.step, code, cause, err: error }, `sweep step ${finding.step} failed`);
      rows.push(rowOf(finding, 'failed', { error: `${code}: ${text}` }));
    }
  }
  await checkReleases(released, rows, context.options);
  return rows;
}

async function runStep(finding: Finding, context: ActContext): Promise<StepResult> {
  const { options } = context;
  switch (finding.kind) {
    case 'orphan-process':
      return finding.step === 'power-off' ? powerOffOrphan(options, finding.process) : reapOrphan(options, finding.process);
    case 'dead-record':
      return settleDeadRecord(context.dispatch, finding.record, finding.step === 'restart');
    case 'orphan-folder':
      return removeBareFolder(options, finding.folder);
    case 'stray-file':
      return removeStrayFile(finding.file);
    case 'orphan-tap':
      return settleTap(options, context.hostId, finding.tap.name, finding.step === 'delete-tap');
    case 'stale-lease': {
      const job = options.jobs.leases!;
      const argv = releaseArgv(finding.lease, finding.serverDuid, job);
      if (typeof argv === 'string') return { outcome: 'skipped', detail: argv };
      await releaseLease(argv);
      return { outcome: 'done', detail: isExpired(finding.lease, Date.now()) ? 'released (expired: dnsmasq drops the line at its next write)' : 'released' };
    }
    case 'stale-neighbour':
      await deleteNeighbour(options.qemu.ipBinary, options.jobs.leases!.interface, finding.entry.address);
      return { outcome: 'done', detail: 'deleted' };
  }
}

/**
 * dhcp_release exits 0 whether or not dnsmasq took the release (it is one UDP datagram): a live lease still
 * in the file afterwards was not released — dnsmasq is not running, or not serving that interface.
 */
async function checkReleases(released: { index: number; key: string }[], rows: SweepRow[], options: SweeperOptions): Promise<void> {
  const job = options.jobs.leases;
  if (released.length === 0 || !job) return;
  const left = new Set(await waitUntilGone(job.leaseFile, released.map((r) => r.key), RELEASE_SETTLE_MS));
  for (const { index, key } of released) {
    const row = rows[index];
    if (!row || !left.has(key)) continue;
    row.outcome = 'failed';
    delete row.detail;
    row.error = `SWEEP_ACTION_FAILED: dnsmasq still holds the lease after the release; is it running and serving ${job.interface}?`;
  }
}
