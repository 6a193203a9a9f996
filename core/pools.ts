/**
 * One tinypool per message type. This is where the serverless contract is enforced: each message runs in a
 * worker with a deadline, can be cancelled, and a crash, a hang or a full queue becomes a coded error for
 * that one message while the pool keeps serving.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import Tinypool from 'tinypool';
import { CloudletError, cloudletError, isCoreErrorCode, lookupError, type WireError } from './errors.ts';
import type { AgentPoolStats, PoolSettings, PluginLogger } from './plugin-api.ts';
import type { PoolWorkerData, WorkerOutcome, WorkerTask, WorkerToMain } from '../workers/protocol.ts';

const WORKER_ENTRY = new URL('../workers/boot.mjs', import.meta.url).href;

export interface PoolSpec {
  type: string;
  settings: PoolSettings;
  workerData: PoolWorkerData;
}

export interface PoolTask {
  id: string;
  type: string;
  /** Epoch ms by which the caller needs the outcome (Infinity: none); the pool's timeoutMs applies too. */
  deadline: number;
  payload: unknown;
  /** When the agent accepted the message: timeoutMs counts from here (default: now). */
  acceptedAt?: number;
}

export interface RunHooks {
  onProgress?(stage: string, detail?: Record<string, unknown>): void;
  /** Receives the handler's log records, to be written by the agent's logger. */
  log?: PluginLogger;
  /** Aborting cancels the message (agent shutdown, caller gone); the reason should be a CloudletError. */
  signal?: AbortSignal;
}

export type RunOutcome = { ok: true; result: unknown } | { ok: false; error: CloudletError };

/** The same shape monitoring plugins see through `ctx.agent.pools()`. */
export type PoolStats = AgentPoolStats;

interface ManagedPool {
  spec: PoolSpec;
  pool: Tinypool;
  running: number;
  /** Undeclared codes from this plugin's handlers are downgraded, so callers only ever see documented codes. */
  declaredCodes: ReadonlySet<string>;
}

export class PoolManager {
  readonly #pools = new Map<string, ManagedPool>();

  constructor(specs: readonly PoolSpec[], declaredCodes: ReadonlyMap<string, ReadonlySet<string>> = new Map()) {
    for (const spec of specs) {
      const { settings } = spec;
      const pool = new Tinypool({
        filename: WORKER_ENTRY,
        name: 'default',
        minThreads: Math.min(settings.minThreads, settings.maxThreads),
        maxThreads: settings.maxThreads,
        idleTimeout: settings.idleTimeoutMs,
        maxQueue: settings.maxQueue,
        // tinypool's Atomics wake-up hangs under Deno; message passing works on both runtimes.
        useAtomics: false,
        workerData: spec.workerData,
        resourceLimits: { maxOldGenerationSizeMb: settings.maxMemoryMb },
      });
      this.#pools.set(spec.type, {
        spec,
        pool,
        running: 0,
        declaredCodes: declaredCodes.get(spec.workerData.pluginName) ?? new Set(),
      });
    }
  }

  has(type: string): boolean {
    return this.#pools.has(type);
  }

  stats(): PoolStats[] {
    return [...this.#pools.values()].map(({ spec, pool, running }) => ({
      type: spec.type,
      threads: pool.threads.length,
      queued: pool.queueSize,
      running,
      completed: pool.completed,
      settings: spec.settings,
    }));
  }

  async run(task: PoolTask, hooks: RunHooks = {}): Promise<RunOutcome> {
    const managed = this.#pools.get(task.type);
    if (!managed) return { ok: false, error: cloudletError('UNKNOWN_TYPE', `no pool for message type "${task.type}"`) };
    const { settings } = managed.spec;
    if (managed.pool.queueSize >= settings.maxQueue && managed.running >= settings.maxThreads) {
      return { ok: false, error: busyError(task.type, settings) };
    }
    // Waiting (for a lock, in a queue) may have used up the time or seen a cancel: then do not start at all.
    if (hooks.signal?.aborted) {
      const reason = hooks.signal.reason;
      return { ok: false, error: reason instanceof CloudletError ? reason : cloudletError('CANCELLED', 'the message was cancelled') };
    }
    if (task.deadline <= Date.now()) {
      return { ok: false, error: cloudletError('DEADLINE_EXCEEDED', `"${task.type}" could not start before its deadline`, { type: task.type }) };
    }
    if (task.acceptedAt !== undefined && task.acceptedAt + settings.timeoutMs <= Date.now()) {
      return { ok: false, error: cloudletError('TIMEOUT', `"${task.type}" waited longer than its ${settings.timeoutMs} ms timeout to start`, { type: task.type }) };
    }
    managed.running++;
    try {
      return await this.#runInWorker(managed, task, hooks);
    } finally {
      managed.running--;
    }
  }

  #runInWorker(managed: ManagedPool, task: PoolTask, hooks: RunHooks): Promise<RunOutcome> {
    const { settings } = managed.spec;
    const { port1: mainPort, port2: workerPort } = new MessageChannel();
    // Aborting this terminates the worker thread: the last resort for a handler that ignores its signal.
    const terminate = new AbortController();
    const now = Date.now();
    const untilDeadlineMs = task.deadline - now;
    // The timeout counts from acceptance: time spent waiting for a lock or a thread counts.
    const untilTimeoutMs = (task.acceptedAt ?? now) + settings.timeoutMs - now;
    // Whichever comes first, the pool's timeout or the caller's deadline, decides the error code.
    const limitedByDeadline = untilDeadlineMs < untilTimeoutMs;
    const budgetMs = Math.max(0, Math.min(untilTimeoutMs, untilDeadlineMs));
    const effectiveDeadline = Date.now() + budgetMs;

    return new Promise<RunOutcome>((resolve) => {
      let settled = false;
      let cancelReason: CloudletError | undefined;
      let graceTimer: ReturnType<typeof setTimeout> | undefined;
      let returnedTimer: ReturnType<typeof setTimeout> | undefined;

      const finish = (outcome: RunOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadlineTimer);
        clearTimeout(graceTimer);
        clearTimeout(returnedTimer);
        hooks.signal?.removeEventListener('abort', onExternalAbort);
        mainPort.close();
        resolve(outcome);
      };

      const cancel = (reason: CloudletError) => {
        if (settled || cancelReason) return;
        cancelReason = reason;
        const message: { t: 'abort'; reason: WireError } = { t: 'abort', reason: reason.toWire() };
        mainPort.postMessage(message);
        graceTimer = setTimeout(() => {
          terminate.abort(reason);
          finish({ ok: false, error: reason });
        }, settings.cancelGraceMs);
      };

      const deadlineTimer = setTimeout(() => {
        cancel(
          limitedByDeadline
            ? cloudletError('DEADLINE_EXCEEDED', `"${task.type}" did not finish before the request's deadline`, { type: task.type })
            : cloudletError('TIMEOUT', `"${task.type}" ran longer than its ${settings.timeoutMs} ms timeout`, {
                type: task.type,
                timeoutMs: settings.timeoutMs,
              }),
        );
      }, budgetMs);

      const onExternalAbort = () => {
        const reason = hooks.signal?.reason;
        cancel(reason instanceof CloudletError ? reason : cloudletError('CANCELLED', 'the message was cancelled'));
      };
      if (hooks.signal?.aborted) onExternalAbort();
      else hooks.signal?.addEventListener('abort', onExternalAbort, { once: true });

      mainPort.on('message', (message: WorkerToMain) => {
        if (message.t === 'progress') {
          if (!cancelReason) hooks.onProgress?.(message.stage, message.detail);
        } else if (message.t === 'log') {
          hooks.log?.[message.level === 'fatal' ? 'error' : message.level](message.obj, message.msg);
        } else if (message.t === 'done') {
          finish(cancelReason ? { ok: false, error: cancelReason } : this.#rebuild(managed, message.outcome));
        }
      });
      // The worker closes its port only after sending `done`; a close without it means the thread died.
      mainPort.on('close', () => {
        if (settled) return;
        terminate.abort();
        finish({ ok: false, error: cancelReason ?? crashedError(task.type) });
      });

      const workerTask: WorkerTask = { id: task.id, type: task.type, deadline: effectiveDeadline, payload: task.payload, port: workerPort };
      managed.pool.run(workerTask, { transferList: [workerPort as MessagePort], signal: terminate.signal }).then(
        () => {
          // The outcome travels on our port, which tinypool's reply may overtake (no ordering between
          // ports); the port's close follows it. Only a worker that returned and never closed it is broken.
          returnedTimer = setTimeout(() => finish({ ok: false, error: cancelReason ?? crashedError(task.type, 'the worker returned without an outcome') }), 5_000);
        },
        (thrown: unknown) => {
          const message = thrown instanceof Error ? thrown.message : String(thrown);
          if (/queue is at limit/i.test(message)) finish({ ok: false, error: busyError(task.type, settings) });
          else finish({ ok: false, error: cancelReason ?? crashedError(task.type, message) });
        },
      );
    });
  }

  #rebuild(managed: ManagedPool, outcome: WorkerOutcome): RunOutcome {
    if (outcome.ok) return outcome;
    const { code, message, details } = outcome.error;
    if (lookupError(code) && (managed.declaredCodes.has(code) || isCoreErrorCode(code))) {
      return { ok: false, error: CloudletError.fromWire(outcome.error) };
    }
    return {
      ok: false,
      error: cloudletError('HANDLER_ERROR', message, { thrownCode: code, ...(details === undefined ? {} : { details }) }),
    };
  }

  async destroy(): Promise<void> {
    await Promise.all([...this.#pools.values()].map(({ pool }) => pool.destroy()));
    this.#pools.clear();
  }
}

function busyError(type: string, settings: PoolSettings): CloudletError {
  return cloudletError('BUSY', `the queue for "${type}" is full (${settings.maxQueue} waiting); try again later`, {
    type,
    maxQueue: settings.maxQueue,
    maxThreads: settings.maxThreads,
  });
}

function crashedError(type: string, reason?: string): CloudletError {
  return cloudletError('WORKER_CRASHED', `the worker running "${type}" died${reason ? `: ${reason}` : ''}; it has been replaced`, {
    type,
    ...(reason ? { reason } : {}),
  });
}
