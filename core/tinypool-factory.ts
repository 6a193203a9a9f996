/**
 * Makes the tinypool behind one message type: its thread settings, and the Node options each thread starts
 * with (see poolExecArgv). PoolManager (pools.ts) decides what runs on it.
 */
import process from 'node:process';
import Tinypool from 'tinypool';
import type { PoolSettings } from './plugin-api.ts';
import type { PoolWorkerData } from '../workers/protocol.ts';

const WORKER_ENTRY = new URL('../workers/boot.mjs', import.meta.url).href;
const TINYPOOL_PRELOAD = new URL('../workers/tinypool-preload.mjs', import.meta.url).href;

/**
 * Each pool thread's Node options: the main thread's own (what a worker inherits when given none) and the
 * preload that spares tinypool a /proc read after every task (workers/tinypool-preload.mjs). Given
 * explicitly, a worker's options are checked, and some options a process takes are refused in a worker
 * (`--max-old-space-size`, `--expose-gc`, …: ERR_WORKER_INVALID_EXEC_ARGV), where inherited they are not.
 * The first refusal turns the preload off for the process: pools then inherit as before.
 * Deno's worker threads take no Node options: no preload there.
 */
let preloadRefused = typeof (globalThis as { Deno?: unknown }).Deno !== 'undefined';

function poolExecArgv(): string[] | undefined {
  return preloadRefused ? undefined : [...process.execArgv, '--import', TINYPOOL_PRELOAD];
}

/**
 * Whether `thrown` is Node refusing a worker's explicit options; then the preload is off from now on. Only a
 * pool made with the preload's options can meet the refusal, so making the pool again ends it.
 */
export function refusedPreload(thrown: unknown): boolean {
  if ((thrown as { code?: unknown } | undefined)?.code !== 'ERR_WORKER_INVALID_EXEC_ARGV') return false;
  preloadRefused = true;
  return true;
}

export interface TinypoolEvents {
  /** A thread died while it ran no task (a timer or promise a handler left behind threw after it answered). */
  onIdleThreadDied(error: unknown): void;
  /** tinypool gave a task to a thread and has none left queued. */
  onDrain(): void;
}

/** A new tinypool with the Node options as they stand; throws what Node throws when it refuses them (refusedPreload). */
export function makeTinypool(settings: PoolSettings, workerData: PoolWorkerData, events: TinypoolEvents): Tinypool {
  const execArgv = poolExecArgv();
  const pool = new Tinypool({
    filename: WORKER_ENTRY,
    name: 'default',
    minThreads: Math.min(settings.minThreads, settings.maxThreads),
    maxThreads: settings.maxThreads,
    idleTimeout: settings.idleTimeoutMs,
    maxQueue: settings.maxQueue,
    // tinypool's Atomics wake-up hangs under Deno; message passing works on both runtimes.
    useAtomics: false,
    // A thread takes its next tasks while it works on one: a thread that waits (for QEMU, a lease, a
    // file) serves others meanwhile, and tasks reach a busy thread without waking it (F12).
    concurrentTasksPerWorker: settings.tasksPerThread,
    ...(execArgv ? { execArgv } : {}),
    workerData,
    resourceLimits: { maxOldGenerationSizeMb: settings.maxMemoryMb },
  });
  // Unheard, tinypool's report would be an uncaught exception: the whole agent would go down.
  pool.on('error', (error: unknown) => events.onIdleThreadDied(error));
  pool.on('drain', () => events.onDrain());
  return pool;
}
