/**
 * Waits for the kernel to announce a neighbour change for one MAC on the bridge, with `ip monitor neigh dev
 * BRIDGE`. Its text form is used: `ip -j monitor` prints text anyway on iproute2 6.1 and has no JSON on older
 * versions. The child is always killed (and awaited) before the promise resolves.
 */
import { spawn } from 'node:child_process';
import { normalizeMac } from '../../core/capabilities/ip-discovery.ts';

export type MonitorOutcome =
  /** A line mentioning the MAC arrived. */
  | { kind: 'change'; line: string }
  | { kind: 'timeout' }
  | { kind: 'aborted' }
  /** `ip monitor` could not run or ended by itself (e.g. no such device); `reason` says why. */
  | { kind: 'unavailable'; reason: string };

export interface MonitorOptions {
  ipBinary: string;
  bridge: string;
  mac: string;
  timeoutMs: number;
  signal: AbortSignal;
  /** Called once the monitor process has started (it listens for changes a moment later). */
  onSpawn?: () => void;
}

const KILL_GRACE_MS = 1_000;
/** setTimeout fires at once for delays beyond a signed 32-bit millisecond count. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Whether an `ip monitor neigh` line names the MAC as one of its words (so it cannot match inside an IPv6 address). */
export function lineMentionsMac(line: string, mac: string): boolean {
  const wanted = normalizeMac(mac);
  return line.split(/\s+/).some((word) => word.toLowerCase() === wanted);
}

export function waitForNeighbourEvent(options: MonitorOptions): Promise<MonitorOutcome> {
  if (options.signal.aborted) return Promise.resolve({ kind: 'aborted' });
  return new Promise((resolve) => {
    const child = spawn(options.ipBinary, ['monitor', 'neigh', 'dev', options.bridge], { stdio: ['ignore', 'pipe', 'pipe'] });
    let settled = false;
    let pending = '';
    let stderr = '';
    let exited = child.exitCode !== null || child.signalCode !== null;
    const exit = new Promise<void>((resolveExit) => {
      child.once('close', () => {
        exited = true;
        resolveExit();
      });
      child.once('error', () => {
        // A process that never started emits 'error' and no 'close'.
        if (child.pid === undefined) {
          exited = true;
          resolveExit();
        }
      });
    });

    const finish = async (outcome: MonitorOutcome): Promise<void> => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal.removeEventListener('abort', onAbort);
      if (!exited) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
        await exit;
        clearTimeout(killer);
      }
      resolve(outcome);
    };
    const onAbort = () => void finish({ kind: 'aborted' });
    const timer = setTimeout(() => void finish({ kind: 'timeout' }), Math.min(Math.max(0, options.timeoutMs), MAX_TIMER_MS));
    options.signal.addEventListener('abort', onAbort, { once: true });

    child.once('spawn', () => options.onSpawn?.());
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      const line = lines.find((l) => lineMentionsMac(l, options.mac));
      if (line !== undefined) void finish({ kind: 'change', line: line.trim() });
    });
    child.stderr.on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (error) => void finish({ kind: 'unavailable', reason: `cannot run ${options.ipBinary}: ${error.message}` }));
    child.on('close', (code, signal) => {
      void finish({ kind: 'unavailable', reason: `"${options.ipBinary} monitor neigh dev ${options.bridge}" ended (${code ?? signal}): ${stderr.trim() || 'no message'}` });
    });
  });
}
