/**
 * A throw-away user + network + pid + mount namespace for tests that need real network devices (bridges, taps,
 * dnsmasq, qemu) without touching the host's interfaces, routes or firewall.
 *
 * One long-lived process (`unshare ... sh`) is the namespace's PID 1; every command enters it with `nsenter`.
 * PID 1 reads its stdin, a pipe from this process: when the test process ends in any way (even SIGKILL), the
 * pipe closes, PID 1 exits and the kernel kills everything left inside. Cleanup registered with t.after does
 * the same on purpose. Works as root and unprivileged (needs unprivileged user namespaces then).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export interface NetnsOptions {
  /** Bridge created inside the namespace; default br0. */
  bridge?: string;
  /** The bridge's address with prefix length; default 10.77.0.1/24 (exists only inside the namespace). */
  bridgeCidr?: string;
}

export interface ExecOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Written to the command's stdin, which is then closed. */
  input?: string;
  /** Kills the command after this long (default 30 s); the result then has code null. */
  timeoutMs?: number;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface SpawnOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Default ['ignore', 'pipe', 'pipe']. */
  stdio?: StdioOptions;
}

/** A long-running process inside the namespace; it dies with the namespace at cleanup at the latest. */
export interface NetnsProcess {
  /** The `nsenter` process: its exit code and signal are the inner command's. */
  child: ChildProcess;
  /** Resolves when the command has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Signals the command itself (signalling `nsenter` would not reach it). No-op once it has exited. */
  kill(signal?: NodeJS.Signals): void;
}

export interface Netns {
  /** Host pid of the namespace's PID 1 (the target for `nsenter --target`). */
  pid: number;
  /** A temp dir for sockets, logs and lease files; removed at cleanup. Same path inside and outside. */
  dir: string;
  bridge: string;
  /** e.g. 10.77.0.1 */
  bridgeAddress: string;
  /** e.g. 24 */
  prefixLength: number;
  /** Runs a command inside the namespace and collects its output. Never rejects for a non-zero exit. */
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
  /** Like exec, but rejects with the command's stderr when it does not exit 0. */
  run(argv: string[], options?: ExecOptions): Promise<string>;
  spawn(argv: string[], options?: SpawnOptions): NetnsProcess;
  /** Creates a tap device attached to the bridge and up; returns its name (default tap0, tap1, ...). */
  addTap(name?: string): Promise<string>;
}

const NSENTER_FLAGS = ['--user', '--net', '--pid', '--mount', '--preserve-credentials'];
const START_TIMEOUT_MS = 10_000;

/** Creates the namespace with lo up and the bridge addressed; torn down when the test ends, pass or fail. */
export async function withNetns(t: TestContext, options: NetnsOptions = {}): Promise<Netns> {
  const bridge = options.bridge ?? 'br0';
  const bridgeCidr = options.bridgeCidr ?? '10.77.0.1/24';
  const [bridgeAddress = '', prefix = ''] = bridgeCidr.split('/');
  const prefixLength = Number(prefix);
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(bridgeAddress) || !(prefixLength >= 1 && prefixLength <= 30)) {
    throw new Error(`netns: bridgeCidr must look like 10.77.0.1/24, got '${bridgeCidr}'`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'cloudlet-netns-'));
  const holder = spawn('unshare', ['--user', '--map-root-user', '--net', '--pid', '--fork', '--kill-child', '--mount-proc', 'sh', '-c', 'read -r _ || true'], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  const spawned: ChildProcess[] = [];
  let pid = 0;
  // Registered before anything can fail, so a half-made namespace is cleaned up too.
  t.after(async () => {
    if (pid > 0) killQuietly(pid, 'SIGKILL');
    holder.stdin?.end();
    if (holder.exitCode === null && holder.signalCode === null) {
      holder.kill('SIGKILL');
      await once(holder, 'exit');
    }
    await Promise.all(spawned.filter((c) => c.exitCode === null && c.signalCode === null).map((c) => once(c, 'exit')));
    await rm(dir, { recursive: true, force: true });
  });

  pid = await namespaceInit(holder);
  let nextTap = 0;
  const ns: Netns = {
    pid,
    dir,
    bridge,
    bridgeAddress,
    prefixLength,
    exec: (argv, execOptions) => execIn(pid, argv, execOptions),
    run: async (argv, execOptions) => {
      const result = await execIn(pid, argv, execOptions);
      if (result.code !== 0) throw new Error(`netns: '${argv.join(' ')}' exited ${result.code ?? result.signal}: ${result.stderr.trim()}`);
      return result.stdout;
    },
    spawn: (argv, spawnOptions) => {
      const proc = spawnIn(pid, argv, spawnOptions);
      spawned.push(proc.child);
      return proc;
    },
    addTap: async (name) => {
      const tap = name ?? `tap${nextTap++}`;
      await ns.run(['sh', '-ec', `ip tuntap add dev "$1" mode tap; ip link set "$1" master "$2"; ip link set "$1" up`, 'sh', tap, bridge]);
      return tap;
    },
  };
  await ns.run([
    'sh',
    '-ec',
    'ip link set lo up; ip link add "$1" type bridge; ip addr add "$2" dev "$1"; ip link set "$1" up',
    'sh',
    bridge,
    bridgeCidr,
  ]);
  return ns;
}

/** Waits for unshare's forked child (PID 1 inside) to be running `sh`, i.e. past its mounts. */
async function namespaceInit(holder: ChildProcess): Promise<number> {
  let stderr = '';
  holder.stderr?.setEncoding('utf8');
  holder.stderr?.on('data', (chunk: string) => (stderr += chunk));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (holder.exitCode !== null || holder.signalCode !== null) {
      throw new Error(`netns: unshare exited ${holder.exitCode ?? holder.signalCode}: ${stderr.trim() || 'no message'} (are user namespaces allowed?)`);
    }
    const child = holder.pid === undefined ? undefined : childrenOf(holder.pid)[0];
    if (child !== undefined && readProc(child, 'comm') === 'sh') return child;
    await sleep(10);
  }
  throw new Error(`netns: the namespace did not start within ${START_TIMEOUT_MS} ms: ${stderr.trim()}`);
}

function nsenterArgs(pid: number, argv: string[], cwd: string | undefined): string[] {
  if (argv.length === 0) throw new Error('netns: empty command');
  // Entering a mount namespace moves the cwd to its root unless told otherwise.
  return ['--target', String(pid), ...NSENTER_FLAGS, `--wd=${cwd ?? process.cwd()}`, '--', ...argv];
}

async function execIn(pid: number, argv: string[], options: ExecOptions = {}): Promise<ExecResult> {
  const proc = spawnIn(pid, argv, { cwd: options.cwd, env: options.env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.child.stdout?.setEncoding('utf8');
  proc.child.stderr?.setEncoding('utf8');
  proc.child.stdout?.on('data', (chunk: string) => (stdout += chunk));
  proc.child.stderr?.on('data', (chunk: string) => (stderr += chunk));
  // A command that exits before reading its stdin would make the write fail with EPIPE; that is not an error.
  proc.child.stdin?.on('error', () => undefined);
  proc.child.stdin?.end(options.input ?? '');
  const timeoutMs = options.timeoutMs ?? 30_000;
  const timer = setTimeout(() => {
    stderr += `\n[netns: killed after ${timeoutMs} ms]`;
    proc.kill('SIGKILL');
    proc.child.kill('SIGKILL');
  }, timeoutMs);
  try {
    const { code, signal } = await proc.exited;
    return { code, signal, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

function spawnIn(pid: number, argv: string[], options: SpawnOptions = {}): NetnsProcess {
  const child = spawn('nsenter', nsenterArgs(pid, argv, options.cwd), {
    env: options.env ?? process.env,
    stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  // Keeps an unobserved spawn failure from becoming an unhandled rejection; awaiting `exited` still sees it.
  exited.catch(() => {});
  return {
    child,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
      // nsenter forks to join the pid namespace and does not forward signals: signal its child.
      for (const inner of childrenOf(child.pid)) killQuietly(inner, signal);
    },
  };
}

export interface Dnsmasq {
  process: NetnsProcess;
  leaseFile: string;
  /** The IPv4 leases in the lease file now (none before the first one is written). */
  leases(): Promise<Lease[]>;
  /** Polls the lease file until it holds a lease for `mac`. */
  waitForLease(mac: string, timeoutMs?: number): Promise<Lease>;
}

export interface Lease {
  expiresAt: number;
  mac: string;
  ip: string;
  hostname: string;
}

export interface DnsmasqOptions {
  /** First and last address handed out; default .10 to .200 of the bridge's /24. */
  range?: [string, string];
  leaseFile?: string;
}

/** Starts dnsmasq inside the namespace as the (only) DHCP server on its bridge; it dies with the namespace. */
export async function startDnsmasq(ns: Netns, options: DnsmasqOptions = {}): Promise<Dnsmasq> {
  const base = ns.bridgeAddress.split('.').slice(0, 3).join('.');
  const [first, last] = options.range ?? [`${base}.10`, `${base}.200`];
  const leaseFile = options.leaseFile ?? join(ns.dir, 'dnsmasq.leases');
  const proc = ns.spawn([
    'dnsmasq',
    // In a user namespace the daemon mode fails to drop privileges; --no-daemon also keeps it our child.
    '--no-daemon',
    '--conf-file=/dev/null',
    `--interface=${ns.bridge}`,
    '--bind-interfaces',
    `--dhcp-range=${first},${last},12h`,
    '--dhcp-authoritative',
    // Without it dnsmasq pings each address before offering it: ~3 s per lease.
    '--no-ping',
    `--dhcp-leasefile=${leaseFile}`,
    `--pid-file=${join(ns.dir, 'dnsmasq.pid')}`,
    '--no-resolv',
    '--no-hosts',
    '--port=0',
    '--log-facility=-',
  ]);
  let log = '';
  const started = new Promise<void>((resolve, reject) => {
    proc.child.stderr?.setEncoding('utf8');
    proc.child.stderr?.on('data', (chunk: string) => {
      log += chunk;
      if (/DHCP, IP range/.test(log)) resolve();
    });
    proc.exited.then(({ code, signal }) => reject(new Error(`netns: dnsmasq exited ${code ?? signal}: ${log.trim()}`)), reject);
  });
  await withTimeout(started, START_TIMEOUT_MS, () => `netns: dnsmasq did not start within ${START_TIMEOUT_MS} ms: ${log.trim()}`);
  const leases = () => readLeases(leaseFile);
  return {
    process: proc,
    leaseFile,
    leases,
    waitForLease: async (mac, timeoutMs = 60_000) => {
      const wanted = mac.toLowerCase();
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const lease = (await leases()).find((l) => l.mac === wanted);
        if (lease !== undefined) return lease;
        if (Date.now() > deadline) throw new Error(`netns: no lease for ${mac} in ${leaseFile} within ${timeoutMs} ms`);
        await sleep(50);
      }
    },
  };
}

/** Lease lines are `expiry mac ip hostname client-id`; IPv6 leases follow a `duid` line and are skipped. */
export async function readLeases(leaseFile: string): Promise<Lease[]> {
  let text: string;
  try {
    text = await readFile(leaseFile, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const leases: Lease[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('duid ')) break;
    const [expiry, mac, ip, hostname] = line.trim().split(/\s+/);
    if (expiry === undefined || mac === undefined || ip === undefined || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) continue;
    leases.push({ expiresAt: Number(expiry), mac: mac.toLowerCase(), ip, hostname: hostname ?? '*' });
  }
  return leases;
}

function childrenOf(pid: number): number[] {
  const text = readProc(pid, `task/${pid}/children`);
  return text === undefined ? [] : text.split(/\s+/).filter(Boolean).map(Number);
}

function readProc(pid: number, file: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8').trim();
  } catch {
    return undefined; // the process is gone
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message())), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
