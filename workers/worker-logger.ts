/** A logger for handler code that forwards records to the main thread, where pino writes them. */
import type { PluginLogger } from '../core/plugin-api.ts';
import { LOG_LEVEL_RANK, type LogLevelName, type WorkerToMain } from './protocol.ts';

type LogRecord = Omit<Extract<WorkerToMain, { t: 'log' }>, 'id'>;

/** `send` posts a record for the current task (handler-worker.ts tags it with the message id). */
export function createWorkerLogger(send: (record: LogRecord) => void, level: LogLevelName): PluginLogger {
  const threshold = LOG_LEVEL_RANK[level];
  const make =
    (name: Exclude<LogLevelName, 'silent'>) =>
    (obj: object | string, msg?: string): void => {
      if (LOG_LEVEL_RANK[name] < threshold) return;
      const record: LogRecord =
        typeof obj === 'string' ? { t: 'log', level: name, obj: {}, msg: obj } : { t: 'log', level: name, obj: toCloneable(obj), msg };
      send(record);
    };
  return { trace: make('trace'), debug: make('debug'), info: make('info'), warn: make('warn'), error: make('error') };
}

/** Errors and other non-cloneable values become plain data, so a log call never throws. */
function toCloneable(obj: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(obj)) {
    if (value instanceof Error) out[key] = { type: value.name, message: value.message, stack: value.stack, code: (value as { code?: unknown }).code };
    else if (typeof value === 'function' || typeof value === 'symbol') out[key] = String(value);
    else out[key] = value;
  }
  try {
    return structuredClone(out);
  } catch {
    return JSON.parse(JSON.stringify(out, (_key, value) => (typeof value === 'bigint' ? value.toString() : value))) as Record<string, unknown>;
  }
}
