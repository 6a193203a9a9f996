/**
 * The `sweep-now` payload and what a sweep reports: declared once, used by the handler, the main-thread
 * service, the event and the tests.
 */
import { z } from '../../core/plugin-api.ts';
import { JOB_NAMES, type FindingKind, type JobName, type SweepAction } from './options.ts';

export const sweepNowPayload = z
  .object({
    /** Report what would be done, change nothing. */
    dryRun: z.boolean().default(false),
    /** Only these jobs; default every configured job. */
    jobs: z.array(z.enum(JOB_NAMES)).min(1).max(JOB_NAMES.length).optional(),
  })
  .strict();

export type SweepNowPayload = z.output<typeof sweepNowPayload>;

/** What is done about a finding. `none`: the action has nothing to do for this kind (or it is `log`). */
export type SweepStep =
  | 'none'
  | 'power-off'
  | 'kill-and-remove'
  | 'mark-stopped'
  | 'restart'
  | 'remove-folder'
  | 'remove-file'
  | 'detach-tap'
  | 'delete-tap'
  | 'release-lease'
  | 'delete-neighbour';

/**
 * logged: only reported (`log`, or an action that does nothing for this kind). planned: a dry run's "would do".
 * done / failed: the step ran. skipped: a check just before acting showed it is no leftover (any more), or the
 * run was aborted first.
 */
export type SweepOutcome = 'logged' | 'planned' | 'done' | 'failed' | 'skipped';

/** One finding and what became of it: one table row in `cloudlet sweep`. Flat on purpose. */
export interface SweepRow {
  job: JobName;
  kind: FindingKind;
  /** What it is about: a VM id, pid, path, tap, `ip mac`. */
  target: string;
  /** Why it counts as a leftover. */
  reason: string;
  action: SweepAction;
  step: SweepStep;
  outcome: SweepOutcome;
  /** How the step ended (e.g. `powered-off`), or why it was skipped. */
  detail?: string;
  /** A failed step's code (SWEEP_ACTION_FAILED or the code a message answered with) and message. */
  error?: string;
}

/** Something that looks like ours and is deliberately left alone (another host's, not QEMU, …). */
export interface IgnoredThing {
  kind: string;
  target: string;
  reason: string;
}

export interface JobError {
  job: JobName;
  code: string;
  message: string;
}

export type SweepTrigger = 'schedule' | 'message';

export interface KindCounts {
  found: number;
  done: number;
  failed: number;
}

export interface SweepReport {
  runId: string;
  host: string;
  trigger: SweepTrigger;
  dryRun: boolean;
  jobs: JobName[];
  startedAt: string;
  durationMs: number;
  /** True when the run stopped early (agent stopping, caller gone); rows not reached are `skipped`. */
  aborted: boolean;
  /** The first 500 findings, each with what became of it. */
  actions: SweepRow[];
  /** Findings beyond those listed in `actions`: handled all the same, and counted in `summary`. */
  actionsOmitted: number;
  summary: KindCounts & { skipped: number; byKind: Partial<Record<FindingKind, KindCounts>> };
  /** The first 100 things left alone on purpose. */
  ignored: IgnoredThing[];
  ignoredOmitted: number;
  /** Per job, what could not be read: that part was not swept. */
  errors: JobError[];
}

/** Cumulative since the agent started, kept in the main thread; in every reply and event. */
export interface SweepCounters {
  since: string;
  runs: number;
  dryRuns: number;
  byTrigger: Record<SweepTrigger, number>;
  /** Runs with at least one failed step or job error. */
  runsWithErrors: number;
  /** Real runs only: a dry run finds and does nothing lasting. */
  found: Partial<Record<FindingKind, number>>;
  done: Partial<Record<FindingKind, number>>;
  failed: Partial<Record<FindingKind, number>>;
  lastRun: { runId: string; at: string; trigger: SweepTrigger; dryRun: boolean; found: number; done: number; failed: number } | null;
}

export type SweepResult = SweepReport & { counters: SweepCounters };
