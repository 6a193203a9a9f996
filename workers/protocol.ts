/**
 * The shapes that cross between the agent's main thread and a handler worker, declared once and imported
 * by both sides. Every task carries its own MessagePort: the worker sends progress, log lines and finally
 * its outcome over it, and receives the abort request on it. Sending the outcome on the same port as
 * everything else keeps them ordered, and a port that closes without an outcome means the worker died.
 */
import type { MessagePort } from 'node:worker_threads';
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
}

export interface WorkerTask {
  id: string;
  type: string;
  deadline: number;
  payload: unknown;
  port: MessagePort;
}

export type WorkerOutcome = { ok: true; result: unknown } | { ok: false; error: WireError };

export type WorkerToMain =
  | { t: 'progress'; stage: string; detail?: Record<string, unknown> }
  | { t: 'log'; level: Exclude<LogLevelName, 'silent'>; obj: Record<string, unknown>; msg?: string }
  | { t: 'done'; outcome: WorkerOutcome };

export type MainToWorker = { t: 'abort'; reason: WireError };

export const LOG_LEVEL_RANK: Record<LogLevelName, number> = {
  trace: 10,
  debug: 20,
  info: 30,
  warn: 40,
  error: 50,
  fatal: 60,
  silent: Infinity,
};
