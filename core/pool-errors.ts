/** The coded errors a pool answers a message with when it does not run it, or cannot say what it returned. */
import type { Cancellation } from './cancellation.ts';
import { cloudletError, thrownMessage, type CloudletError } from './errors.ts';
import type { PoolSettings } from './plugin-api.ts';
import { findUncloneable } from '../workers/uncloneable.ts';

/** What a pool knows of a message when it decides whether it may start. */
export interface StartingTask {
  type: string;
  deadline: number;
  acceptedAt: number;
  payload?: unknown;
}

/** Why a message must not start now: it was cancelled, or its time ran out while it waited; undefined if it may. */
export function cannotStart(task: StartingTask, settings: PoolSettings, cancellation: Cancellation | undefined): CloudletError | undefined {
  if (cancellation?.reason) return cancellation.reason;
  const now = Date.now();
  if (task.deadline <= now) return notStartedInTime(task.type, settings, true);
  if (task.acceptedAt + settings.timeoutMs <= now) return notStartedInTime(task.type, settings, false);
  return undefined;
}

/** The answer for a message whose time ran out before it started: the request's deadline, or the pool's timeout. */
export function notStartedInTime(type: string, settings: PoolSettings, byDeadline: boolean): CloudletError {
  return byDeadline
    ? cloudletError('DEADLINE_EXCEEDED', `"${type}" could not start before its deadline`, { type })
    : cloudletError('TIMEOUT', `"${type}" waited longer than its ${settings.timeoutMs} ms timeout to start`, { type, timeoutMs: settings.timeoutMs });
}

export function busyError(type: string, settings: PoolSettings): CloudletError {
  return cloudletError('BUSY', `the queue for "${type}" is full (${settings.maxQueue} waiting); try again later`, {
    type,
    maxQueue: settings.maxQueue,
    maxThreads: settings.maxThreads,
  });
}

/**
 * Why a task never ran or never came back. A payload structured clone refuses (a function from the payload
 * schema's transform) cannot be posted to any thread: that is the plugin's schema, not a thread that died,
 * and sending it again cannot help. It is looked for only here, after a failure, not on every message.
 */
export function handOverFailed(task: Pick<StartingTask, 'type' | 'payload'>, thrown: unknown): CloudletError {
  const uncloneable = findUncloneable(task.payload);
  if (uncloneable) {
    const path = `payload${uncloneable.path}`;
    const message = `${uncloneable.what} cannot be sent to the handler's worker thread; the plugin's payload schema must produce plain data`;
    return cloudletError('INVALID_PAYLOAD', `invalid payload for "${task.type}": ${path}: ${message}`, { issues: [{ path, message }] });
  }
  return crashedError(task.type, thrownMessage(thrown));
}

export function crashedError(type: string, reason?: string): CloudletError {
  return cloudletError('WORKER_CRASHED', `the worker running "${type}" died${reason ? `: ${reason}` : ''}; it has been replaced`, {
    type,
    ...(reason ? { reason } : {}),
  });
}
