/**
 * One tinypool per message type. This is where the serverless contract is enforced: each message runs in a
 * worker with a deadline, can be cancelled, and a crash, a hang or a full queue becomes a coded error for
 * that one message while the pool keeps serving.
 */
import { randomUUID } from 'node:crypto';
import type Tinypool from 'tinypool';
import type { Cancellation } from './cancellation.ts';
import { CloudletError, cloudletError, isCoreErrorCode, lookupError, thrownMessage } from './errors.ts';
import type { AgentPoolStats, PluginLogger, PoolSettings } from './plugin-api.ts';
import type { MainToWorker, PoolWorkerData, SideMessage, WorkerOutcome, WorkerResult, WorkerTask, WorkerToMain } from '../workers/protocol.ts';
import { RunTable } from '../workers/run-table.ts';
import { handlerLogFields } from './handler-log-fields.ts';
import { busyError, cannotStart, crashedError, handOverFailed, notStartedInTime } from './pool-errors.ts';
import { stopThread, watchExits } from './pool-threads.ts';
import { makeTinypool, refusedPreload } from './tinypool-factory.ts';

export interface PoolSpec {
  type: string;
  settings: PoolSettings;
  /** What every worker of the pool gets; the side channel's name and the run table are added by the PoolManager. */
  workerData: Omit<PoolWorkerData, 'channel' | 'runTable'>;
}

/** How long a returned outcome waits for side messages its task sent and that are still on their way. */
const SIDE_MESSAGES_WAIT_MS = 5_000;

export interface PoolTask {
  id: string;
  type: string;
  /** Epoch ms by which the caller needs the outcome (Infinity: none); the pool's timeoutMs applies too. */
  deadline: number;
  payload: unknown;
  /** When the agent accepted the message: timeoutMs counts from here (default: now). */
  acceptedAt?: number;
  /**
   * The handler's `ctx.inFlight` (MessageDefinition.seesInFlight), asked for as the task is handed to its
   * thread; none: an empty object.
   */
  inFlight?: () => Record<string, string[]>;
}

export interface RunHooks {
  onProgress?(stage: string, detail?: Record<string, unknown>): void;
  /** Receives the handler's log records, to be written by the agent's logger. */
  log?: PluginLogger;
  /** Cancelling cancels the message (agent shutdown); its reason is the error the message is answered with. */
  cancellation?: Cancellation;
  /**
   * Something the message must wait for before it may wait for a thread (its `serializeBy` lock), asked for
   * once the pool has taken the message: it counts against `maxQueue` and as queued while it waits, and its
   * time budget and cancel apply, so it is answered as soon as either runs out. Whoever hands it out takes it
   * back (releases the lock) once `run` has settled, whether the message ran or not. Undefined from it: there
   * is nothing to wait for (the lock is free), and the message goes on like one without `startAfter`.
   */
  startAfter?: () => Promise<unknown> | undefined;
}

/**
 * For the log only: `stack`, where the handler threw, when its error became HANDLER_ERROR (a bug, not a
 * declared failure); `threadStopped`, when the handler ignored its cancel for cancelGraceMs and its thread
 * was stopped (the other messages on that thread with it).
 */
export type RunOutcome = { ok: true; result: unknown } | { ok: false; error: CloudletError; stack?: string; threadStopped?: true };

/** The same shape monitoring plugins see through `ctx.agent.pools()`. */
export type PoolStats = AgentPoolStats;

interface WaitingTask {
  /** Hands the task to tinypool. */
  start(): void;
  /** The pool is going away: the task is answered with `error` and never started. */
  drop(error: CloudletError): void;
}

interface ManagedPool {
  spec: PoolSpec;
  pool: Tinypool;
  /** A new tinypool for this type, with the Node options as they stand (see poolExecArgv). */
  makePool: () => Tinypool;
  /** Progress and log lines from the workers, abort requests to them (workers/protocol.ts). */
  channel: InstanceType<typeof BroadcastChannel>;
  /** Side-message listeners of the tasks running now, by run (two runs of one message id may overlap). */
  listeners: Map<number, (message: WorkerToMain) => void>;
  /**
   * Abort requests by run, kept until tinypool hands the task back (it may still be queued there after
   * its caller was answered): sent again to each thread that starts, so none runs a cancelled task.
   */
  aborts: Map<number, MainToWorker>;
  /** Which thread runs which task: how a handler that ignores its cancel is found and stopped. */
  runTable: RunTable;
  /** Messages taken by `run` and not answered yet: waiting for their `startAfter`, here, in tinypool, or running. */
  accepted: number;
  /** Messages waiting for their `startAfter` (a lock), each with how to answer it when the pool goes away. */
  held: Set<(error: CloudletError) => void>;
  /**
   * Messages waiting for room on a thread, oldest first. They wait here rather than in tinypool's queue:
   * tinypool takes one queued task per task that ends, so with a queue of its own a thread would never hold
   * more than one task again (tasksPerThread).
   */
  waiting: WaitingTask[];
  /** Tasks handed to tinypool that it has not handed back yet (queued there, running, or stuck). */
  handedOver: number;
  /** `#pump` is running (tinypool's 'drain' comes back into it from inside `run`). */
  pumping: boolean;
  /**
   * The last task handed over may wait in tinypool's queue (no thread had room): hand over no more until
   * tinypool says 'drain' (it gave a task to a thread and has none queued) or a task comes back.
   */
  tinypoolQueues: boolean;
  /** Undeclared codes from this plugin's handlers are downgraded, so callers only ever see documented codes. */
  declaredCodes: ReadonlySet<string>;
  /** Threads whose exit is watched (see watchExits). */
  watchedThreads: WeakSet<object>;
}

export class PoolManager {
  readonly #pools = new Map<string, ManagedPool>();
  /** Numbers the runs: aborts name a run, not a message id (workers/protocol.ts, WorkerTask.run). */
  #runs = 0;

  /**
   * `log` hears of threads that died with no task on them (a timer or promise the handler left behind threw
   * after it answered): tinypool replaces such a thread and reports it to the pool, not to a task.
   */
  constructor(specs: readonly PoolSpec[], declaredCodes: ReadonlyMap<string, ReadonlySet<string>> = new Map(), log?: Pick<PluginLogger, 'warn'>) {
    for (const spec of specs) {
      const { settings } = spec;
      const channelName = `cloudlet-pool:${spec.type}:${randomUUID()}`;
      const runTable = RunTable.create(settings.maxThreads, settings.tasksPerThread);
      const workerData: PoolWorkerData = { ...spec.workerData, channel: channelName, runTable: runTable.buffer };
      const makePool = () =>
        makeTinypool(settings, workerData, {
          onIdleThreadDied: (error) =>
            log?.warn({ type: spec.type, err: error }, `a worker thread of "${spec.type}" died while it ran no message; it has been replaced`),
          onDrain: () => {
            const managed = this.#pools.get(spec.type);
            if (!managed) return;
            managed.tinypoolQueues = false;
            this.#pump(managed);
          },
        });
      let pool: Tinypool;
      try {
        pool = makePool(); // with minThreads > 0, threads start here
      } catch (thrown) {
        if (!refusedPreload(thrown)) throw thrown;
        pool = makePool();
      }
      const channel = new BroadcastChannel(channelName);
      const listeners = new Map<number, (message: WorkerToMain) => void>();
      const aborts = new Map<number, MainToWorker>();
      channel.onmessage = (event: MessageEvent) => {
        const message = event.data as SideMessage;
        if (message.t === 'listening') {
          const managed = this.#pools.get(spec.type);
          if (managed) watchExits(managed.pool, managed.watchedThreads);
          // A thread that just started missed the aborts sent before its channel opened.
          for (const abort of aborts.values()) channel.postMessage(abort);
        }
        // Our own abort requests are not echoed back; a message for a finished run is dropped.
        else if (message.t !== 'abort') listeners.get(message.run)?.(message);
      };
      // The pool's workers keep the agent alive, not this channel.
      (channel as { unref?: () => void }).unref?.();
      this.#pools.set(spec.type, {
        spec,
        pool,
        makePool,
        channel,
        listeners,
        aborts,
        runTable,
        accepted: 0,
        held: new Set(),
        waiting: [],
        handedOver: 0,
        pumping: false,
        tinypoolQueues: false,
        declaredCodes: declaredCodes.get(spec.workerData.pluginName) ?? new Set(),
        watchedThreads: new WeakSet(),
      });
    }
  }

  stats(): PoolStats[] {
    return [...this.#pools.values()].map(({ spec, pool, held, waiting, handedOver }) => ({
      type: spec.type,
      threads: pool.threads.length,
      queued: held.size + waiting.length + pool.queueSize,
      // Tasks still in tinypool's queue (while a thread starts) are not running yet.
      running: Math.max(0, handedOver - pool.queueSize),
      completed: pool.completed,
      settings: spec.settings,
    }));
  }

  async run(given: PoolTask, hooks: RunHooks = {}): Promise<RunOutcome> {
    const managed = this.#pools.get(given.type);
    if (!managed) return { ok: false, error: cloudletError('UNKNOWN_TYPE', `no pool for message type "${given.type}"`) };
    const { settings } = managed.spec;
    // maxQueue bounds what waits, for a thread or for a lock; what holds a thread slot is bounded by the
    // threads. Messages held on a lock take no slot: one that needs none must not be refused for them.
    const slots = settings.maxThreads * settings.tasksPerThread;
    const notHeld = managed.accepted - managed.held.size;
    const waiting = managed.held.size + Math.max(0, notHeld - slots);
    if (notHeld >= slots && waiting >= settings.maxQueue) return { ok: false, error: busyError(given.type, settings) };
    const task = { ...given, acceptedAt: given.acceptedAt ?? Date.now() };
    // Waiting (for a lock, in a queue) may have used up the time or seen a cancel: then do not start at all.
    const tooLate = cannotStart(task, settings, hooks.cancellation);
    if (tooLate) return { ok: false, error: tooLate };
    managed.accepted++;
    try {
      const gate = hooks.startAfter?.();
      if (gate) {
        // It will wait for its lock: a place in the queue, whether or not a thread is free.
        if (waiting >= settings.maxQueue) return { ok: false, error: busyError(given.type, settings) };
        const gave = await this.#holdUntil(managed, task, gate, hooks.cancellation);
        if (gave) return gave;
        const tooLateNow = cannotStart(task, settings, hooks.cancellation);
        if (tooLateNow) return { ok: false, error: tooLateNow };
      }
      return await this.#runInWorker(managed, task, hooks);
    } finally {
      managed.accepted--;
    }
  }

  /**
   * Holds a taken message until `gate` settles, as a message waiting for a thread is held: counted as queued,
   * and answered as soon as its time budget runs out or it is cancelled, with the same codes. Resolves with
   * that answer, or with undefined once the gate opened in time.
   */
  #holdUntil(managed: ManagedPool, task: PoolTask & { acceptedAt: number }, gate: Promise<unknown>, cancellation: Cancellation | undefined): Promise<RunOutcome | undefined> {
    const { settings } = managed.spec;
    const timeoutAt = task.acceptedAt + settings.timeoutMs;
    return new Promise((resolve) => {
      let settled = false;
      let stopListening: (() => void) | undefined;
      const settle = (error?: CloudletError) => {
        if (settled) return;
        settled = true;
        clearTimeout(budgetTimer);
        stopListening?.();
        managed.held.delete(settle);
        resolve(error ? { ok: false, error } : undefined);
      };
      const budgetTimer = setTimeout(() => settle(notStartedInTime(task.type, settings, task.deadline < timeoutAt)), Math.max(0, Math.min(task.deadline, timeoutAt) - Date.now()));
      managed.held.add(settle);
      stopListening = cancellation?.onCancel(settle);
      gate.then(
        () => settle(),
        (thrown: unknown) => settle(cloudletError('INTERNAL', `"${task.type}" could not wait for its turn: ${thrownMessage(thrown)}`, { type: task.type })),
      );
    });
  }

  #runInWorker(managed: ManagedPool, task: PoolTask, hooks: RunHooks): Promise<RunOutcome> {
    const { settings } = managed.spec;
    // Positive int32 (the run table holds int32); 2^31 runs apart never meet in flight.
    const run = (this.#runs = (this.#runs % 0x7fff_ffff) + 1);
    const now = Date.now();
    const untilDeadlineMs = task.deadline - now;
    // The timeout counts from acceptance: time spent waiting for a lock or a thread counts.
    const untilTimeoutMs = (task.acceptedAt ?? now) + settings.timeoutMs - now;
    // Whichever comes first, the pool's timeout or the caller's deadline, decides the error code.
    const limitedByDeadline = untilDeadlineMs < untilTimeoutMs;
    const budgetMs = Math.max(0, Math.min(untilTimeoutMs, untilDeadlineMs));
    // From the same clock reading as the budget: the handler's deadline is exactly the earlier of the two limits.
    const effectiveDeadline = now + budgetMs;

    return new Promise<RunOutcome>((resolve) => {
      let settled = false;
      /** This task's place in `managed.waiting`, until it is handed to tinypool. */
      let waiting: WaitingTask | undefined;
      let cancelReason: CloudletError | undefined;
      let graceTimer: ReturnType<typeof setTimeout> | undefined;
      let sideMessagesTimer: ReturnType<typeof setTimeout> | undefined;
      let sideMessagesSeen = 0;
      /** The returned outcome, held until every side message its task sent has been seen. */
      let returned: WorkerResult | undefined;

      const finish = (outcome: RunOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadlineTimer);
        clearTimeout(graceTimer);
        clearTimeout(sideMessagesTimer);
        stopListening?.();
        managed.listeners.delete(run);
        // Answered before it was handed to tinypool: it waits no longer (queue length, memory).
        const at = waiting ? managed.waiting.indexOf(waiting) : -1;
        if (at >= 0) managed.waiting.splice(at, 1);
        resolve(outcome);
      };
      const finishReturned = () => {
        if (returned) finish(cancelReason ? { ok: false, error: cancelReason } : this.#rebuild(managed, returned.outcome));
      };

      const cancel = (reason: CloudletError) => {
        if (settled || cancelReason) return;
        cancelReason = reason;
        // Not handed to tinypool yet: nothing runs it, so it is answered now and never started.
        if (waiting) return finish({ ok: false, error: reason });
        const message: MainToWorker = { t: 'abort', id: task.id, run, reason: reason.toWire() };
        managed.aborts.set(run, message);
        managed.channel.postMessage(message);
        graceTimer = setTimeout(() => {
          // The last resort for a handler that ignores its signal; a task still queued is never started.
          const thread = managed.runTable.threadOf(run);
          if (thread !== undefined) stopThread(managed.pool, thread, `message ${task.id} on the same thread ran past its time and ignored the cancel`);
          finish({ ok: false, error: reason, ...(thread === undefined ? {} : { threadStopped: true as const }) });
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

      const stopListening = hooks.cancellation?.onCancel(cancel);

      managed.listeners.set(run, (message) => {
        if (message.t === 'exited') {
          // The thread is ending mid-task: out of the pool with it now, before it is handed another message
          // (its 'exit' may come later: watchExits), and answer with what the thread said.
          const reason = message.uncaught ?? `the handler ended its thread (exit code ${message.code})`;
          stopThread(managed.pool, message.thread, reason);
          finish({ ok: false, error: cancelReason ?? crashedError(task.type, reason) });
          return;
        }
        sideMessagesSeen++;
        if (message.t === 'progress') {
          if (!cancelReason) hooks.onProgress?.(message.stage, message.detail);
        } else {
          hooks.log?.[message.level === 'fatal' ? 'error' : message.level](handlerLogFields(message.obj), message.msg);
        }
        if (returned && sideMessagesSeen >= returned.sideMessages) finishReturned();
      });

      const start = () => {
        waiting = undefined;
        const workerTask: WorkerTask = { run, id: task.id, type: task.type, deadline: effectiveDeadline, cancelGraceMs: settings.cancelGraceMs, payload: task.payload, ...(task.inFlight ? { inFlight: task.inFlight() } : {}) };
        let running: Promise<WorkerResult>;
        try {
          // Cleared by tinypool's 'drain' during the call when the task went straight to a thread.
          managed.tinypoolQueues = true;
          running = this.#post(managed, workerTask);
        } catch (thrown) {
          managed.tinypoolQueues = false;
          // tinypool could not even take the task (e.g. no thread can be started): this message fails, cleanly.
          finish({ ok: false, error: handOverFailed(task, thrown) });
          return;
        }
        managed.handedOver++;
        const handedBack = () => {
          managed.handedOver--;
          // A thread has room again; if tinypool still queues some, the next hand-over finds out.
          managed.tinypoolQueues = false;
          managed.aborts.delete(run);
          this.#pump(managed);
        };
        running.then(
          (result) => {
            handedBack();
            returned = result;
            if (sideMessagesSeen >= result.sideMessages) return finishReturned();
            // The outcome overtook some of its task's progress or log lines (they take another path): wait
            // for them, so they are neither lost nor delivered after the reply.
            sideMessagesTimer = setTimeout(finishReturned, SIDE_MESSAGES_WAIT_MS);
          },
          (thrown: unknown) => {
            handedBack();
            // tinypool rejects when the worker died (an exception it did not catch, process.exit, out of
            // memory) or was stopped by us, and when the task could not be posted to the thread.
            const message = thrownMessage(thrown);
            if (/queue is at limit/i.test(message)) finish({ ok: false, error: busyError(task.type, settings) });
            else finish({ ok: false, error: cancelReason ?? handOverFailed(task, thrown) });
          },
        );
      };
      waiting = {
        start,
        drop: (error) => finish({ ok: false, error }),
      };
      managed.waiting.push(waiting);
      this.#pump(managed);
    });
  }

  /**
   * Hands waiting tasks to tinypool while a thread has room for one: tinypool gives a task straight to a
   * ready thread with room, and queues it otherwise (no thread started yet, or all full). After a task it
   * queued, the next waits for tinypool's 'drain' (the queued one went to a thread) or for a task to come back.
   */
  #pump(managed: ManagedPool): void {
    if (managed.pumping) return;
    managed.pumping = true;
    try {
      const { maxThreads, tasksPerThread } = managed.spec.settings;
      while (managed.waiting.length > 0 && !managed.tinypoolQueues && managed.handedOver < maxThreads * tasksPerThread) {
        (managed.waiting.shift() as WaitingTask).start();
      }
    } finally {
      managed.pumping = false;
    }
  }

  /**
   * Hands a task to tinypool. A pool's first thread may start here (minThreads 0): if Node refuses the
   * preload's options, the pool is made again without them and takes the task.
   */
  #post(managed: ManagedPool, task: WorkerTask): Promise<WorkerResult> {
    try {
      return managed.pool.run(task) as Promise<WorkerResult>;
    } catch (thrown) {
      if (!refusedPreload(thrown)) throw thrown;
      void managed.pool.destroy().catch(() => undefined);
      managed.pool = managed.makePool();
      return managed.pool.run(task) as Promise<WorkerResult>;
    }
  }

  #rebuild(managed: ManagedPool, outcome: WorkerOutcome): RunOutcome {
    if (outcome.ok) return outcome;
    const { code, message, details } = outcome.error;
    const stack = outcome.stack === undefined ? {} : { stack: outcome.stack };
    if (lookupError(code) && (managed.declaredCodes.has(code) || isCoreErrorCode(code))) {
      // A thrown plain Error arrives as HANDLER_ERROR already; a declared or core code is a failure the
      // handler meant, with nothing to trace.
      return { ok: false, error: CloudletError.fromWire(outcome.error), ...(code === 'HANDLER_ERROR' ? stack : {}) };
    }
    return {
      ok: false,
      error: cloudletError('HANDLER_ERROR', message, { thrownCode: code, ...(details === undefined ? {} : { details }) }),
      ...stack,
    };
  }

  async destroy(): Promise<void> {
    await Promise.all(
      [...this.#pools.values()].map(async ({ spec, pool, channel, held, waiting }) => {
        const stopped = () => cloudletError('SHUTTING_DOWN', `the pool for "${spec.type}" stopped before the message started`, { type: spec.type });
        for (const answer of [...held]) answer(stopped());
        for (const task of waiting.splice(0)) task.drop(stopped());
        await pool.destroy();
        channel.close();
      }),
    );
    this.#pools.clear();
  }
}
