/**
 * Child processes of a benchmark (agents, echo servers): started, waited for until they say they are ready,
 * measured from /proc, and always killed by the scope that started them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CleanupScope } from './scope.ts';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
/**
 * Agents run from this tree, or from CLOUDLET_BENCH_AGENT_ROOT: a checkout with a proposed change, measured
 * against the same baselines in the same run (see bench/README.md, "Trying a fix").
 */
export const agentRoot = process.env.CLOUDLET_BENCH_AGENT_ROOT ?? repoRoot;
export const cliBin = join(agentRoot, 'core/cli/bin.js');
const CLOCK_TICKS_PER_S = 100;

export interface BenchProcess {
  child: ChildProcess;
  pid: number;
  output(): string;
  /** Waits until `marker` appears in stdout/stderr; rejects if the process exits first or after timeoutMs. */
  waitFor(marker: string | RegExp, timeoutMs?: number): Promise<void>;
  /** Polls `condition` until true; rejects if the process exits first or after timeoutMs. */
  waitUntil(condition: () => boolean | Promise<boolean>, what: string, timeoutMs?: number): Promise<void>;
  /** Resident set size in bytes (the whole process: main thread and worker threads). */
  rssBytes(): number;
  /** User + system CPU time used so far, in ms. */
  cpuMs(): number;
  /** SIGTERM, then SIGKILL after graceMs; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Extra node flags (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** How long cleanup waits after SIGTERM before SIGKILL (a profiled process needs time to write its profile). */
  stopGraceMs?: number;
  /** Load the script through tsx (default); false runs plain JavaScript with Node alone. */
  tsx?: boolean;
}

/** Starts a TypeScript file of the bench (servers) under tsx. */
export function spawnScript(scope: CleanupScope, script: string, args: string[], options: SpawnOptions = {}): BenchProcess {
  const loader = options.tsx === false ? [] : ['--import', 'tsx'];
  return spawnNode(scope, [...(options.nodeArgs ?? []), ...loader, script, ...args], options.env, options.stopGraceMs);
}

/** Extra node options for every agent (CLOUDLET_BENCH_AGENT_NODE_ARGS, space-separated): to try a runtime flag on the agents alone. */
const agentNodeArgs = (process.env.CLOUDLET_BENCH_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean);

/**
 * Starts a real `cloudlet agent --config FILE`, as an operator would (bin.js registers tsx itself). Ready
 * when `isReady` says so (default: it logged "ready as host", which needs log level info or lower).
 */
export async function spawnAgent(
  scope: CleanupScope,
  configFile: string,
  options: SpawnOptions & { readyTimeoutMs?: number; isReady?: (agent: BenchProcess) => Promise<boolean> } = {},
): Promise<BenchProcess> {
  const agent = spawnNode(scope, [...agentNodeArgs, ...(options.nodeArgs ?? []), cliBin, 'agent', '--config', configFile], { CLOUDLET_LOG_FORMAT: 'json', ...options.env }, options.stopGraceMs);
  const isReady = options.isReady ?? (async (a: BenchProcess) => a.output().includes('ready as host'));
  await agent.waitUntil(() => isReady(agent), 'ready', options.readyTimeoutMs ?? 60_000);
  return agent;
}

function spawnNode(scope: CleanupScope, argv: string[], env: NodeJS.ProcessEnv = {}, stopGraceMs = 2_000): BenchProcess {
  const child = spawn(process.execPath, argv, { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  // Bounded: a chatty child must not grow the runner's memory during a long measurement.
  const append = (chunk: Buffer) => {
    output += chunk.toString('utf8');
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  const exited = once(child, 'exit').then(() => undefined);
  const isRunning = () => child.exitCode === null && child.signalCode === null;
  const stop = async (graceMs = 3_000) => {
    if (!isRunning()) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => isRunning() && child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  };
  scope.after(() => stop(stopGraceMs));
  if (child.pid === undefined) throw new Error(`could not start ${argv.join(' ')}`);
  const pid = child.pid;
  const handle: BenchProcess = {
    child,
    pid,
    output: () => output,
    waitFor(marker, timeoutMs = 30_000) {
      return handle.waitUntil(() => (typeof marker === 'string' ? output.includes(marker) : marker.test(output)), `"${marker}"`, timeoutMs);
    },
    async waitUntil(condition, what, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (!(await condition())) {
        if (!isRunning()) throw new Error(`${argv.join(' ')} exited (${child.exitCode ?? child.signalCode}) before ${what}:\n${output.slice(-4_000)}`);
        if (Date.now() > deadline) throw new Error(`${argv.join(' ')}: not ${what} within ${timeoutMs} ms:\n${output.slice(-4_000)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    rssBytes: () => procRssBytes(pid),
    cpuMs: () => procCpuMs(pid),
    stop,
  };
  return handle;
}

export function procRssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status)?.[1];
  if (kib === undefined) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kib) * 1024;
}

export function procCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
}

/**
 * The process listening on the broker's TCP port (RabbitMQ's beam.smp on this machine), to show how much
 * CPU the broker takes during a measurement. Undefined when none is found here (a remote broker).
 */
export function findListeningPid(port: number): number | undefined {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // local_address is field 1 (ADDR:PORT), st field 3 (0A = LISTEN), inode field 9
      if (fields[1]?.endsWith(`:${hexPort}`) && fields[3] === '0A' && fields[9]) inodes.add(`socket:[${fields[9]}]`);
    }
  }
  if (inodes.size === 0) return undefined;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      for (const fd of readdirSync(`/proc/${name}/fd`)) {
        if (inodes.has(readlinkSync(`/proc/${name}/fd/${fd}`))) return Number(name);
      }
    } catch {
      // gone, or not ours to look at
    }
  }
  return undefined;
}
