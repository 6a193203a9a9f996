/**
 * A closed-loop load generator: `concurrency` callers, each sending its next call when the previous one was
 * answered. Latency is per call; throughput is what the callers completed over the measured window.
 */
import { summarize, type LatencySummary } from './stats.ts';

export interface LoadOptions {
  concurrency: number;
  /** Calls before measuring (connections, JIT, worker threads, caches); not counted. */
  warmupCalls: number;
  /** Calls measured (at least; see minMs). */
  calls: number;
  /**
   * Keep calling until this long has passed too, so a fast contender is measured over as long a window as a
   * slow one (CPU time from /proc comes in 10 ms ticks).
   */
  minMs?: number;
  /** Stops early (with what was measured) after this long, so a slow system cannot stretch a run. */
  maxMs?: number;
  /** Called when warm-up is over and measuring starts, and when it ends (e.g. to read CPU counters). */
  onMeasureStart?: () => void;
  onMeasureEnd?: () => void;
}

export async function runLoad(call: (index: number) => Promise<void>, options: LoadOptions): Promise<LatencySummary> {
  const { concurrency } = options;
  await drive(call, Math.max(options.warmupCalls, 0), concurrency, Number.POSITIVE_INFINITY, 0, () => undefined);
  const samples: number[] = [];
  options.onMeasureStart?.();
  const stopAt = performance.now() + (options.maxMs ?? Number.POSITIVE_INFINITY);
  const started = performance.now();
  await drive(call, options.calls, concurrency, stopAt, started + (options.minMs ?? 0), (ms) => samples.push(ms));
  const wallMs = performance.now() - started;
  options.onMeasureEnd?.();
  return summarize(samples, wallMs);
}

async function drive(
  call: (index: number) => Promise<void>,
  total: number,
  concurrency: number,
  stopAt: number,
  notBefore: number,
  record: (ms: number) => void,
): Promise<void> {
  let next = 0;
  const caller = async () => {
    for (;;) {
      const now = performance.now();
      if (now >= stopAt || (next >= total && now >= notBefore)) return;
      const index = next++;
      const started = performance.now();
      await call(index);
      record(performance.now() - started);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(total, 1)) }, caller));
}
