/** A logger for handler code that forwards records to the main thread, where pino writes them. */
import { thrownMessage } from '../core/errors.ts';
import type { PluginLogger } from '../core/plugin-api.ts';
import { LOG_LEVEL_RANK, type LogLevelName, type WorkerToMain } from './protocol.ts';

export type LogRecord = Omit<Extract<WorkerToMain, { t: 'log' }>, 'id' | 'run'>;

/**
 * `post` posts a record for the current task (handler-worker.ts tags it) and returns why it could not,
 * if it could not. A log call never throws: what cannot be copied is turned into plain data, and a record
 * that still cannot go is replaced by a warning that says so.
 */
export function createWorkerLogger(post: (record: LogRecord) => string | undefined, level: LogLevelName): PluginLogger {
  const threshold = LOG_LEVEL_RANK[level];
  const make =
    (name: Exclude<LogLevelName, 'silent'>) =>
    (obj: object | string, msg?: string): void => {
      if (LOG_LEVEL_RANK[name] < threshold) return;
      const record: LogRecord =
        typeof obj === 'string' ? { t: 'log', level: name, obj: {}, msg: obj } : { t: 'log', level: name, obj: toCloneable(obj), msg: messageText(msg) };
      const failure = post(record);
      if (failure !== undefined) post({ t: 'log', level: 'warn', obj: { level: name }, msg: `dropped a log record that cannot be copied out of the worker thread: ${failure}` });
    };
  return { trace: make('trace'), debug: make('debug'), info: make('info'), warn: make('warn'), error: make('error') };
}

/** Errors and other values a log record cannot carry become plain data; whatever `obj` is, this returns. */
export function toCloneable(obj: unknown): Record<string, unknown> {
  // Plain JavaScript handlers can pass anything (pino itself takes `log.info(null, 'msg')`).
  if (obj === null || obj === undefined) return {};
  if (typeof obj !== 'object') return { value: plain(obj) };
  try {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(obj)) out[key] = plain(read(obj, key));
    try {
      return structuredClone(out);
    } catch {
      // Something deeper cannot be cloned (a function inside a nested object): JSON keeps the rest.
      return JSON.parse(JSON.stringify(out, jsonReplacer())) as Record<string, unknown>;
    }
  } catch (failure) {
    return { unloggable: `the object logged could not be copied: ${thrownMessage(failure)}` };
  }
}

/** What a log line carries for a value: an Error as its parts, a function or symbol as text. */
function plain(value: unknown): unknown {
  if (value instanceof Error) {
    return { type: read(value, 'name'), message: read(value, 'message'), stack: read(value, 'stack'), code: read(value, 'code') };
  }
  if (typeof value === 'function' || typeof value === 'symbol') return String(value);
  return value;
}

/** A property, or what went wrong reading it (a getter that throws). */
function read(obj: object, key: string): unknown {
  try {
    return (obj as Record<string, unknown>)[key];
  } catch (failure) {
    return `[unreadable: ${thrownMessage(failure)}]`;
  }
}

/** For JSON.stringify: cycles, BigInts, functions and symbols become text instead of throwing. */
function jsonReplacer(): (this: unknown, key: string, value: unknown) => unknown {
  const ancestors: unknown[] = [];
  return function replace(this: unknown, _key: string, value: unknown): unknown {
    if (typeof value === 'bigint') return value.toString();
    if (typeof value === 'function' || typeof value === 'symbol') return String(value);
    if (typeof value !== 'object' || value === null) return value;
    // `this` is the object holding `value`: what is above it on the way down is still its ancestry.
    while (ancestors.length > 0 && ancestors.at(-1) !== this) ancestors.pop();
    if (ancestors.includes(value)) return '[Circular]';
    ancestors.push(value);
    return value;
  };
}

function messageText(msg: unknown): string | undefined {
  return msg === undefined ? undefined : thrownMessage(msg);
}
