/**
 * The worker entry: runs one message's handler and reports the outcome. It knows nothing about any plugin;
 * the handler module comes from the pool's `workerData`. Web-standard APIs and `node:` specifiers only, so
 * the same file runs under Node (via tsx) and Deno 2.
 */
import process from 'node:process';
import { threadId, workerData } from 'node:worker_threads';
import { thrownMessage, type WireError } from '../core/errors.ts';
import type { Handler, HandlerContext } from '../core/plugin-api.ts';
import type { PoolWorkerData, SideMessage, WorkerOutcome, WorkerResult, WorkerTask, WorkerToMain } from './protocol.ts';
import { RunTable } from './run-table.ts';
import { createWorkerLogger } from './worker-logger.ts';
import { importModule } from '../core/runtime/import-module.ts';

// tinypool hands each worker `[tinypoolPrivateData, userWorkerData]` (its documented `TinypoolData`).
const [tinypoolData, poolData] = workerData as [{ workerId?: number } | undefined, PoolWorkerData];
/** This thread's row of the run table: the main thread finds here which thread to stop for a stuck run. */
const runRow = poolData.runTable ? new RunTable(poolData.runTable).attach(tinypoolData?.workerId ?? 0, threadId) : undefined;

let handlerPromise: Promise<Handler> | undefined;

function loadHandler(): Promise<Handler> {
  handlerPromise ??= importModule<{ default?: unknown }>(poolData.handlerUrl).then((module: { default?: unknown }) => {
    if (typeof module.default !== 'function') {
      throw Object.assign(new Error(`handler module ${poolData.handlerUrl} must export a function as its default export`), {
        code: 'HANDLER_ERROR',
      });
    }
    return module.default as Handler;
  });
  return handlerPromise;
}

/**
 * The handler's signal, made the first time the handler reads it: many handlers never do, and an
 * AbortController costs ~4 µs a message (docs/PERFORMANCE.md, F11). An abort before that is kept and applied.
 */
class TaskAbort {
  #controller: AbortController | undefined;
  #reason: Error | undefined;

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#reason) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  abort(reason: Error): void {
    if (this.#reason) return;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

/** The tasks this worker runs, by run (up to the pool's tasksPerThread at once). */
const running = new Map<number, { id: string; abort: TaskAbort }>();
/**
 * Ids cancelled before any worker started them (still queued in tinypool when the abort went out): the
 * worker that gets one later must not run it. Bounded; an entry is only needed for the cancel grace.
 */
const cancelledEarly = new Set<number>();
const CANCELLED_EARLY_KEPT = 256;

// The pool's side channel: progress and log lines out, abort requests in. Messages other workers of the
// pool send arrive here too and are ignored.
const channel = new BroadcastChannel(poolData.channel);
channel.onmessage = (event: MessageEvent) => {
  const message = event.data as SideMessage;
  if (message.t !== 'abort') return;
  const task = running.get(message.run);
  if (task) task.abort.abort(Object.assign(new Error(message.reason.message), message.reason));
  else {
    cancelledEarly.add(message.run);
    if (cancelledEarly.size > CANCELLED_EARLY_KEPT) cancelledEarly.delete(cancelledEarly.values().next().value as number);
  }
};
channel.postMessage({ t: 'listening' } satisfies SideMessage);
// Handler code that calls process.exit ends this thread mid-task: say so, or the task would wait for its
// deadline (the message is queued before the thread goes, and delivered).
let uncaught: string | undefined;
// Only watches (a monitor changes nothing): an exception nobody caught ends the thread too, and its message
// says more than the exit code.
process.on('uncaughtExceptionMonitor', (error: Error) => {
  uncaught = error instanceof Error ? error.message : String(error);
});
process.on('exit', (code: number) => {
  for (const [run, { id }] of running) {
    channel.postMessage({ id, run, t: 'exited', code, thread: threadId, ...(uncaught === undefined ? {} : { uncaught }) } satisfies WorkerToMain);
  }
});

export default async function runTask(task: WorkerTask): Promise<WorkerResult> {
  // Cancelled or out of time while it waited for a thread: the main thread has answered it already.
  if (cancelledEarly.delete(task.run) || Date.now() >= task.deadline) {
    return { outcome: { ok: false, error: { code: 'CANCELLED', message: 'cancelled before it started' } }, sideMessages: 0 };
  }
  const abort = new TaskAbort();
  running.set(task.run, { id: task.id, abort });
  const cell = runRow?.claim(task.run) ?? -1;
  let sideMessages = 0;
  /**
   * Posts a side message of this task; returns why it could not (a value structured clone refuses), if so.
   * Counted only once posted: the main thread holds the outcome until it has seen as many as were counted.
   */
  const post = (message: DistributiveOmit<WorkerToMain, 'id' | 'run'>): string | undefined => {
    try {
      // Tagged with the run: a late line from work this handler left running reaches nobody else's run.
      channel.postMessage({ ...message, id: task.id, run: task.run });
    } catch (failure) {
      return thrownMessage(failure);
    }
    sideMessages++;
    return undefined;
  };
  const log = createWorkerLogger(post, poolData.logLevel);
  const context: HandlerContext = {
    options: poolData.options,
    host: poolData.host,
    message: { id: task.id, type: task.type, deadline: task.deadline, cancelGraceMs: task.cancelGraceMs },
    log,
    get signal() {
      return abort.signal;
    },
    // Handler code may put its own signal in place (ctx.signal = AbortSignal.any([...])), as before it was lazy.
    set signal(value: AbortSignal) {
      Object.defineProperty(this, 'signal', { value, writable: true, enumerable: true, configurable: true });
    },
    progress: (stage, detail) => {
      const failure = post(detail === undefined ? { t: 'progress', stage } : { t: 'progress', stage, detail });
      // Progress is best effort (PLUGINS.md): one that cannot leave the thread is dropped and logged, not thrown.
      if (failure !== undefined) {
        log.warn({ stage: typeof stage === 'string' ? stage.slice(0, 64) : typeof stage }, `dropped a progress update that cannot be copied out of the worker thread: ${failure}`);
      }
    },
    plugins: poolData.plugins,
    providers: poolData.providers ?? {},
    inFlight: task.inFlight ?? {},
  };
  let outcome: WorkerOutcome;
  try {
    const handler = await loadHandler();
    const result = await handler(task.payload, context);
    outcome = { ok: true, result: toJsonValue(result) };
  } catch (thrown) {
    const stack = stackOf(thrown);
    outcome = { ok: false, error: serializeThrown(thrown), ...(stack === undefined ? {} : { stack }) };
  } finally {
    running.delete(task.run);
    runRow?.release(cell, task.run);
  }
  return { outcome, sideMessages };
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** Results travel as JSON on the wire; normalising here catches cycles and BigInts inside the worker. */
function toJsonValue(result: unknown): unknown {
  if (result === undefined) return undefined;
  try {
    return JSON.parse(JSON.stringify(result)) as unknown;
  } catch (cause) {
    throw Object.assign(new Error(`the handler's result cannot be sent as JSON: ${(cause as Error).message}`), { code: 'INVALID_RESULT' });
  }
}

/**
 * Keeps a thrown code as-is: the main thread rebuilds it from the catalogue (and the plugin's declared
 * codes) and turns codes nobody declared into HANDLER_ERROR. Total: whatever was thrown (an object with no
 * prototype, a getter or a Proxy that throws), the task gets a coded error; were this to throw, the task
 * would come back as a crashed thread, which it is not.
 */
function serializeThrown(thrown: unknown): WireError {
  try {
    if (typeof thrown !== 'object' || thrown === null) return { code: 'HANDLER_ERROR', message: String(thrown) };
    const code = readProperty(thrown, 'code');
    const message = readProperty(thrown, 'message');
    const details = readProperty(thrown, 'details');
    const wire: WireError = {
      code: typeof code === 'string' ? code : 'HANDLER_ERROR',
      message: typeof message === 'string' ? message : describeThrownObject(thrown),
    };
    if (details !== undefined) {
      try {
        wire.details = JSON.parse(JSON.stringify(details)) as unknown;
      } catch {
        // details that cannot travel are dropped rather than failing the reply
      }
    }
    return wire;
  } catch (failure) {
    return { code: 'HANDLER_ERROR', message: `the handler threw an object that cannot be read (${thrownMessage(failure)})` };
  }
}

/** Longer stacks are cut: they go into one log line. */
const MAX_STACK_CHARS = 8_192;

/** Where it was thrown (for a syntax error in a handler module, the file and line), when it says. */
function stackOf(thrown: unknown): string | undefined {
  if (typeof thrown !== 'object' || thrown === null) return undefined;
  const stack = readProperty(thrown, 'stack');
  return typeof stack === 'string' ? stack.slice(0, MAX_STACK_CHARS) : undefined;
}

/** A property of what was thrown, or undefined when reading it throws (a getter). */
function readProperty(thrown: object, key: string): unknown {
  try {
    return (thrown as Record<string, unknown>)[key];
  } catch {
    return undefined;
  }
}

/** Text for a thrown object without a string message: its own, if it has one that can be made. */
function describeThrownObject(thrown: object): string {
  if (Object.getPrototypeOf(thrown) === null) return 'the handler threw an object with no prototype and no message';
  try {
    return String(thrown);
  } catch (failure) {
    return `the handler threw an object that cannot be read (${thrownMessage(failure)})`;
  }
}
