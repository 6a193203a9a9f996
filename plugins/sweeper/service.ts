/**
 * The sweeper of one agent, in its main thread (started by the `start` hook, ended by `stop`): the schedules,
 * the relay that serves `sweep-now`, one run at a time for both, and the counters. Each run is logged (every
 * finding, then a summary) and published as a `sweep.completed` event.
 */
import { CloudletError, type DispatchReply, type HostIdentity, type PluginLogger } from '../../core/plugin-api.ts';
import type { ScheduledTask } from 'node-cron';
import { countRun, emptyCounters } from './counters.ts';
import { sweeperError } from './errors.ts';
import { configuredJobs, type JobName, type SweeperOptions } from './options.ts';
import { serveRelay } from './relay.ts';
import { scheduleJobs, stopSchedules } from './schedule.ts';
import type { SweepCounters, SweepReport, SweepResult, SweepTrigger } from './schemas.ts';
import { runSweep } from './sweep.ts';

export const SWEEP_EVENT = 'sweep.completed';
/** On stop, how long a run in progress gets to notice the abort and finish its current step. */
const STOP_WAIT_MS = 10_000;

export interface SweeperServiceSettings {
  options: SweeperOptions;
  host: HostIdentity;
  log: PluginLogger;
  emitEvent(type: string, payload?: unknown): Promise<void>;
  dispatch(type: string, payload: unknown): Promise<DispatchReply>;
}

export interface RunOptions {
  signal?: AbortSignal;
  onProgress?: (stage: string, detail?: Record<string, unknown>) => void;
}

export class SweeperService {
  readonly #settings: SweeperServiceSettings;
  readonly #stopping = new AbortController();
  readonly #counters: SweepCounters;
  /** Runs queue here: a message-triggered sweep waits for a scheduled one and the other way round. */
  #queue: Promise<unknown> = Promise.resolve();
  #tasks: ScheduledTask[] = [];
  #closeRelay: (() => void) | undefined;

  constructor(settings: SweeperServiceSettings) {
    this.#settings = settings;
    this.#counters = emptyCounters(new Date());
  }

  get counters(): SweepCounters {
    return structuredClone(this.#counters);
  }

  start(): void {
    const { options, host, log } = this.#settings;
    // Schedules first: if one cannot be made, start throws and no stop hook comes to close anything, so
    // the relay must not be open yet (it would take sweep-now requests for a sweeper that never started).
    this.#tasks = scheduleJobs(options, host.id, log, async (job) => {
      try {
        await this.sweep({ dryRun: false, jobs: [job] }, 'schedule');
      } catch (error) {
        log.error({ err: error, code: (error as { code?: string }).code, job }, 'scheduled sweep failed');
      }
    });
    this.#closeRelay = serveRelay(host, (payload, run) => this.sweep({ dryRun: payload.dryRun, ...(payload.jobs ? { jobs: payload.jobs } : {}) }, 'message', run), (error) =>
      log.warn({ err: error }, 'sweeper: ignored a malformed message on its relay channel'),
    );
    const jobs = configuredJobs(options).map((job) => ({ job, schedule: options.jobs[job]!.schedule, action: options.jobs[job]!.action }));
    log.info({ jobs, jitterMs: options.jitterMs, stateDir: options.qemu.stateDir }, 'sweeper scheduled');
  }

  async stop(): Promise<void> {
    this.#stopping.abort(new CloudletError('SHUTTING_DOWN', 'the agent is stopping'));
    await stopSchedules(this.#tasks);
    this.#tasks = [];
    this.#closeRelay?.();
    let timer: NodeJS.Timeout | undefined;
    const waited = await Promise.race([
      this.#queue.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), STOP_WAIT_MS))),
    ]);
    clearTimeout(timer);
    if (!waited) this.#settings.log.warn({ waitedMs: STOP_WAIT_MS }, 'a sweep step was still running at stop; leaving it');
  }

  /** Runs a sweep once any sweep in progress has finished; resolves with its report and the counters. */
  sweep(request: { dryRun: boolean; jobs?: JobName[] }, trigger: SweepTrigger, run: RunOptions = {}): Promise<SweepResult> {
    const { options } = this.#settings;
    const configured = configuredJobs(options);
    const jobs = request.jobs ?? configured;
    const missing = jobs.filter((job) => !configured.includes(job));
    if (missing.length > 0) {
      return Promise.reject(
        sweeperError('SWEEP_JOB_NOT_CONFIGURED', `job(s) ${missing.join(', ')} not configured on host ${this.#settings.host.id}; configured: ${configured.join(', ') || 'none'}`, {
          jobs: missing,
          configured,
        }),
      );
    }
    if (this.#stopping.signal.aborted) return Promise.reject(sweeperError('SWEEPER_NOT_RUNNING', 'the agent is stopping'));
    const turn = this.#queue.then(() => this.#runNow({ jobs, dryRun: request.dryRun }, trigger, run));
    this.#queue = turn.catch(() => undefined);
    return turn;
  }

  async #runNow(request: { jobs: JobName[]; dryRun: boolean }, trigger: SweepTrigger, run: RunOptions): Promise<SweepResult> {
    const { signal, dispose } = eitherSignal(this.#stopping.signal, run.signal);
    try {
      // Waited for a run that ended at stop, or the caller gave up while waiting: do not start.
      if (signal.aborted) throw new CloudletError('CANCELLED', `sweep not started: ${(signal.reason as Error | undefined)?.message ?? 'cancelled'}`);
      return await this.#sweepAndReport(request, trigger, signal, run.onProgress);
    } finally {
      dispose();
    }
  }

  async #sweepAndReport(
    request: { jobs: JobName[]; dryRun: boolean },
    trigger: SweepTrigger,
    signal: AbortSignal,
    onProgress: RunOptions['onProgress'],
  ): Promise<SweepResult> {
    const { options, host, log } = this.#settings;
    const report = await runSweep(
      {
        hostId: host.id,
        options,
        log,
        signal,
        dispatch: (type, payload) => this.#settings.dispatch(type, payload),
        ...(onProgress ? { onProgress } : {}),
      },
      { ...request, trigger },
    );
    countRun(this.#counters, report);
    this.#logReport(report);
    const result: SweepResult = { ...report, counters: this.counters };
    await this.#settings.emitEvent(SWEEP_EVENT, result).catch((error: unknown) => {
      log.warn({ err: error, code: (error as { code?: string }).code, runId: report.runId }, `could not publish ${SWEEP_EVENT}`);
    });
    return result;
  }

  #logReport(report: SweepReport): void {
    const { log } = this.#settings;
    const base = { runId: report.runId, trigger: report.trigger, dryRun: report.dryRun };
    for (const row of report.actions) {
      if (row.outcome === 'failed') log.warn({ ...base, ...row }, `sweep: ${row.kind} ${row.target}: ${row.step} failed`);
      else log.info({ ...base, ...row }, `sweep: ${row.kind} ${row.target}: ${row.outcome === 'planned' ? `would ${row.step}` : row.outcome}`);
    }
    for (const error of report.errors) log.warn({ ...base, ...error }, `sweep job ${error.job}: ${error.message}`);
    const { found, done, failed, skipped, byKind } = report.summary;
    const level = failed > 0 || report.errors.length > 0 ? 'warn' : 'info';
    log[level](
      { ...base, jobs: report.jobs, found, done, failed, skipped, byKind, ignored: report.ignored.length, errors: report.errors.length, durationMs: report.durationMs, aborted: report.aborted },
      `sweep ${report.dryRun ? '(dry run) ' : ''}finished: ${found} found, ${done} done, ${failed} failed`,
    );
  }
}

/**
 * Aborted when either is (AbortSignal.any arrived only in Node 20.3); `dispose` takes the listeners off again,
 * so the agent-long `stopping` signal does not collect one per run.
 */
function eitherSignal(a: AbortSignal, b: AbortSignal | undefined): { signal: AbortSignal; dispose(): void } {
  if (!b) return { signal: a, dispose: () => {} };
  const controller = new AbortController();
  const listeners = [a, b].map((signal) => {
    const onAbort = () => controller.abort(signal.reason);
    if (signal.aborted) controller.abort(signal.reason);
    else signal.addEventListener('abort', onAbort, { once: true });
    return () => signal.removeEventListener('abort', onAbort);
  });
  return { signal: controller.signal, dispose: () => listeners.forEach((remove) => remove()) };
}
