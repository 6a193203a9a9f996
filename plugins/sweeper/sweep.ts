/**
 * One sweep: read, plan, act (unless dry), report. Knows nothing of threads, schedules or counters, so the
 * cron in the agent's main thread and a `sweep-now` message run the very same code. Changing a VM record
 * needs `dispatch` (qemu-backend's messages), which only the main thread has; without it those steps fail.
 */
import { randomUUID } from 'node:crypto';
import type { PluginLogger } from '../../core/plugin-api.ts';
import { carryOut, rowOf } from './act.ts';
import type { Dispatch } from './act-orphans.ts';
import { gatherInventory } from './inventory.ts';
import type { FindingKind, JobName, SweeperOptions } from './options.ts';
import { planSweep } from './plan.ts';
import type { KindCounts, SweepReport, SweepRow, SweepTrigger } from './schemas.ts';

export interface SweepEnvironment {
  hostId: string;
  options: SweeperOptions;
  log: PluginLogger;
  signal: AbortSignal;
  dispatch?: Dispatch;
  onProgress?: (stage: string, detail?: Record<string, unknown>) => void;
}

export interface SweepRequest {
  jobs: JobName[];
  dryRun: boolean;
  trigger: SweepTrigger;
}

/** Rows in a report at most; a host with more leftovers than this says how many more (`actionsOmitted`). */
const MAX_ROWS = 500;
const MAX_IGNORED = 100;

export async function runSweep(env: SweepEnvironment, request: SweepRequest): Promise<SweepReport> {
  const started = Date.now();
  const runId = randomUUID();
  env.onProgress?.('inventory', { jobs: request.jobs });
  const { inventory, errors } = await gatherInventory(env.options, env.hostId, request.jobs, env.signal);
  let rows: SweepRow[] = [];
  let ignored: SweepReport['ignored'] = [];
  if (inventory) {
    const plan = planSweep(env.options, request.jobs, inventory);
    ignored = plan.ignored;
    if (request.dryRun) {
      rows = plan.findings.map((f) => rowOf(f, f.step === 'none' ? 'logged' : 'planned'));
    } else {
      env.onProgress?.('acting', { steps: plan.findings.filter((f) => f.step !== 'none').length });
      rows = await carryOut(plan.findings, { options: env.options, hostId: env.hostId, log: env.log, signal: env.signal, ...(env.dispatch ? { dispatch: env.dispatch } : {}) });
    }
  }
  return {
    runId,
    host: env.hostId,
    trigger: request.trigger,
    dryRun: request.dryRun,
    jobs: request.jobs,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    aborted: env.signal.aborted,
    actions: rows.slice(0, MAX_ROWS),
    // All were handled and are in the summary; only the report's list is cut.
    actionsOmitted: Math.max(0, rows.length - MAX_ROWS),
    summary: summarize(rows),
    ignored: ignored.slice(0, MAX_IGNORED),
    ignoredOmitted: Math.max(0, ignored.length - MAX_IGNORED),
    errors,
  };
}

export function summarize(rows: readonly SweepRow[]): SweepReport['summary'] {
  const summary: SweepReport['summary'] = { found: 0, done: 0, failed: 0, skipped: 0, byKind: {} };
  for (const row of rows) {
    const kind: KindCounts = (summary.byKind[row.kind as FindingKind] ??= { found: 0, done: 0, failed: 0 });
    summary.found++;
    kind.found++;
    if (row.outcome === 'done') {
      summary.done++;
      kind.done++;
    } else if (row.outcome === 'failed') {
      summary.failed++;
      kind.failed++;
    } else if (row.outcome === 'skipped') summary.skipped++;
  }
  return summary;
}
