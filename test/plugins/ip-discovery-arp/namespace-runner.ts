/** Test helper: runs in-namespace.ts inside a test namespace and returns its JSON answer. */
import { fileURLToPath } from 'node:url';
import type { DiscoveredAddress, VmNetworkIdentity } from '../../../core/capabilities/ip-discovery.ts';
import { repoRoot } from '../../helpers.ts';
import type { Netns, NetnsProcess } from '../../support/netns.ts';
import type { LogLine } from './in-namespace.ts';

export const inNamespaceScript = fileURLToPath(new URL('./in-namespace.ts', import.meta.url));

export interface StrategyAnswer {
  ok: boolean;
  addresses?: DiscoveredAddress[];
  elapsedMs?: number;
  error?: { code?: string; message?: string };
  logs: LogLine[];
}

function argv(command: 'discover' | 'wait', request: { vm: VmNetworkIdentity; options?: unknown; timeoutMs?: number }): string[] {
  return [process.execPath, '--import', 'tsx', inNamespaceScript, command, JSON.stringify(request)];
}

function answerFrom(stdout: string, stderr: string): StrategyAnswer {
  const line = stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as StrategyAnswer;
  } catch {
    throw new Error(`in-namespace.ts printed no JSON answer; stdout: ${stdout}\nstderr: ${stderr}`);
  }
}

/** `discover` inside the namespace. */
export async function discoverIn(ns: Netns, vm: VmNetworkIdentity, options: unknown): Promise<StrategyAnswer> {
  const result = await ns.exec(argv('discover', { vm, options }), { cwd: repoRoot, timeoutMs: 120_000 });
  return answerFrom(result.stdout, result.stderr);
}

/** Starts `waitForChange` inside the namespace; `watching` resolves once the strategy was called. */
export function waitIn(ns: Netns, vm: VmNetworkIdentity, options: unknown, timeoutMs: number): { process: NetnsProcess; watching: Promise<void>; answer: Promise<StrategyAnswer> } {
  const proc = ns.spawn(argv('wait', { vm, options, timeoutMs }), { cwd: repoRoot });
  let stdout = '';
  let stderr = '';
  proc.child.stdout?.setEncoding('utf8');
  proc.child.stderr?.setEncoding('utf8');
  proc.child.stdout?.on('data', (chunk: string) => (stdout += chunk));
  const watching = new Promise<void>((resolve, reject) => {
    proc.child.stderr?.on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.includes('watching\n')) resolve();
    });
    proc.exited.then(() => reject(new Error(`in-namespace.ts wait exited before watching: ${stderr}`)), reject);
  });
  watching.catch(() => {});
  const answer = proc.exited.then(() => answerFrom(stdout, stderr));
  return { process: proc, watching, answer };
}
