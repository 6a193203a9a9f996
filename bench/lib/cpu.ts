/**
 * CPU used per call by each process taking part (client, server, broker). Wall-clock figures on a shared
 * 2-core machine move with whatever else runs; CPU time per call moves much less, and says where the
 * work is.
 */
import process from 'node:process';
import { procCpuMs } from './processes.ts';

export interface CpuProbe {
  start(): void;
  stop(): void;
  /** µs of CPU per call over the last start/stop window, by participant. */
  perCallUs(calls: number): Record<string, number | null>;
}

/** `pids`: named processes to read from /proc; `self` is this process (the client side). */
/** Below this a window holds too few 10 ms ticks to say anything per call. */
const MIN_WINDOW_MS = 500;

export function cpuProbe(pids: Record<string, number | undefined>): CpuProbe {
  let startSelf = 0;
  let startedAt = 0;
  let windowMs = 0;
  let used: Record<string, number | null> = {};
  let startTimes: Record<string, number | null> = {};
  const read = (pid: number | undefined) => {
    if (pid === undefined) return null;
    try {
      return procCpuMs(pid);
    } catch {
      return null; // exited
    }
  };
  const selfMs = () => {
    const usage = process.cpuUsage();
    return (usage.user + usage.system) / 1000;
  };
  return {
    start() {
      startedAt = performance.now();
      startSelf = selfMs();
      startTimes = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, read(pid)]));
    },
    stop() {
      windowMs = performance.now() - startedAt;
      used = { client: selfMs() - startSelf };
      for (const [name, pid] of Object.entries(pids)) {
        const before = startTimes[name];
        const after = read(pid);
        used[name] = before === null || before === undefined || after === null ? null : after - before;
      }
    },
    perCallUs(calls) {
      return Object.fromEntries(Object.entries(used).map(([name, ms]) => [name, ms === null || calls === 0 || windowMs < MIN_WINDOW_MS ? null : (ms * 1000) / calls]));
    },
  };
}
