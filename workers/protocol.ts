/**
 * The shapes that cross between the agent's main thread and a handler worker, declared once and imported
 * by both sides. A task goes to a worker, and its outcome comes back, through tinypool (a task and its
 * return value). What happens in between — progress, log lines, an abort request — travels on one
 * BroadcastChannel per pool (named in `PoolWorkerData.channel`), tagged with the run: a channel per task
 * cost a MessageChannel, a port transfer and an extra wake-up on every message (bench finding F2). Not with
 * the message id alone: two runs of one id may be in flight (two callers that chose the same id, a retry
 * while the handler of the first run still sends), and each must get its own lines.
 * Side messages and the outcome take different paths, so the outcome counts the side messages its task
 * sent and the main thread finishes the task only once it has seen them all: nothing is reordered or lost.
 */
import type { WireError } from '../core/errors.ts';
import type { CapabilityProvider, HostIdentity, LoadedPluginSummary } from '../core/plugin-api.ts';

export type LogLevelName = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** Fixed for the life of a pool: sent once as tinypool `workerData`, not with every message. */
export interface PoolWorkerData {
  handlerUrl: string;
  pluginName: string;
  options: unknown;
  host: HostIdentity;
  plugins: LoadedPluginSummary[];
  providers: Record<string, CapabilityProvider[]>;
  logLevel: LogLevelName;
  /** The pool's BroadcastChannel for side messages (set by the PoolManager). */
  channel: string;
  /** Where each thread says which runs it is working on (workers/run-table.ts; set by the PoolManager). */
  runTable: SharedArrayBuffer;
}

export interface WorkerTask {
  /**
   * This run of the message, unique among the pool's runs in flight (a positive int32): aborts name it, so
   * an abort for one run of an id never stops a later run of the same id (a retry after TIMEOUT or
   * SHUTTING_DOWN keeps its id), and the run table (workers/run-table.ts) names the thread running it.
   */
  run: number;
  id: string;
  type: string;
  deadline: number;
  /** The pool's cancelGraceMs: the handler's `ctx.message.cancelGraceMs`. */
  cancelGraceMs: number;
  payload: unknown;
  /** The handler's `ctx.inFlight`, when its definition has `seesInFlight`. */
  inFlight?: Record<string, string[]>;
}

/** `stack`: where a failing handler threw, for the agent log only (never sent to the caller). */
export type WorkerOutcome = { ok: true; result: unknown } | { ok: false; error: WireError; stack?: string };

/** What a worker's task returns: its outcome and how many side messages the task sent before it. */
export interface WorkerResult {
  outcome: WorkerOutcome;
  sideMessages: number;
}

/** Side messages from a worker, for the run `run` of the message `id`. */
export type WorkerToMain =
  | { id: string; run: number; t: 'progress'; stage: string; detail?: Record<string, unknown> }
  | { id: string; run: number; t: 'log'; level: Exclude<LogLevelName, 'silent'>; obj: Record<string, unknown>; msg?: string }
  /**
   * The thread is ending while it runs the task (process.exit in handler code). tinypool notices a thread
   * that throws, not one that exits, so this is how the task learns it will never return. Not counted in
   * `sideMessages`.
   */
  | { id: string; run: number; t: 'exited'; code: number; uncaught?: string; thread: number };

/** To the pool's workers: the one running task `id` aborts it; the others ignore it. */
export type MainToWorker = { t: 'abort'; id: string; run: number; reason: WireError };

/**
 * A worker's channel is open (sent once, as the thread starts). A BroadcastChannel keeps nothing for
 * listeners that do not exist yet, so the main thread sends again the aborts a starting thread missed.
 */
export type WorkerListening = { t: 'listening' };

export type SideMessage = WorkerToMain | MainToWorker | WorkerListening;

export const LOG_LEVEL_RANK: Record<LogLevelName, number> = {
  trace: 10,
  debug: 20,
  info: 30,
  warn: 40,
  error: 50,
  fatal: 60,
  silent: Infinity,
};
