/** Latency samples in, the figures the table shows out. Percentiles by nearest rank, so p99 is a real sample. */

export interface LatencySummary {
  /** Calls measured (warm-up excluded). */
  n: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  /** Completed calls per second of wall-clock time over the measured window. */
  throughputPerS: number;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] as number;
}

export function summarize(samplesMs: readonly number[], wallMs: number): LatencySummary {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const sum = sorted.reduce((total, value) => total + value, 0);
  return {
    n: sorted.length,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    meanMs: sorted.length === 0 ? Number.NaN : sum / sorted.length,
    throughputPerS: wallMs > 0 ? (sorted.length * 1000) / wallMs : Number.NaN,
  };
}

/** The middle value; the mean of the two middle ones for an even count. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/**
 * Several rounds of the same measurement, interleaved with the other configurations of a benchmark, give
 * one figure each: the median over rounds (robust to one round disturbed by a background burst on 2 cores).
 */
export function medianOfRounds(rounds: readonly LatencySummary[]): LatencySummary & { rounds: number; throughputRange: [number, number] } {
  const throughputs = rounds.map((r) => r.throughputPerS);
  return {
    n: rounds.reduce((total, r) => total + r.n, 0),
    p50Ms: median(rounds.map((r) => r.p50Ms)),
    p99Ms: median(rounds.map((r) => r.p99Ms)),
    meanMs: median(rounds.map((r) => r.meanMs)),
    throughputPerS: median(throughputs),
    rounds: rounds.length,
    throughputRange: [Math.min(...throughputs), Math.max(...throughputs)],
  };
}
