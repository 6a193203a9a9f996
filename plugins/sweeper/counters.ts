/** Cumulative sweep counts since the agent started: kept by the main thread, sent in replies and events. */
import type { SweepCounters, SweepReport } from './schemas.ts';

export function emptyCounters(since: Date): SweepCounters {
  return { since: since.toISOString(), runs: 0, dryRuns: 0, byTrigger: { schedule: 0, message: 0 }, runsWithErrors: 0, found: {}, done: {}, failed: {}, lastRun: null };
}

export function countRun(counters: SweepCounters, report: SweepReport): void {
  counters.runs++;
  counters.byTrigger[report.trigger]++;
  if (report.summary.failed > 0 || report.errors.length > 0) counters.runsWithErrors++;
  counters.lastRun = {
    runId: report.runId,
    at: report.startedAt,
    trigger: report.trigger,
    dryRun: report.dryRun,
    found: report.summary.found,
    done: report.summary.done,
    failed: report.summary.failed,
  };
  if (report.dryRun) {
    counters.dryRuns++;
    return;
  }
  for (const [kind, counts] of Object.entries(report.summary.byKind) as [keyof SweepCounters['found'], { found: number; done: number; failed: number }][]) {
    counters.found[kind] = (counters.found[kind] ?? 0) + counts.found;
    counters.done[kind] = (counters.done[kind] ?? 0) + counts.done;
    counters.failed[kind] = (counters.failed[kind] ?? 0) + counts.failed;
  }
}
