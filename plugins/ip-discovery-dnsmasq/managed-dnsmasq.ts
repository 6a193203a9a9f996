/**
 * Managed mode: this agent runs dnsmasq as the DHCP server of the VM bridge, for hosts that have none. One
 * child process, supervised from the agent's main thread: started and awaited in the `start` hook, restarted
 * with a growing (bounded) delay when it dies, stopped in the `stop` hook.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access, lstat, mkdir, readdir, readFile, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { dirname } from 'node:path';
import process from 'node:process';
import { CloudletError, type PluginLogger } from '../../core/plugin-api.ts';
import type { ManagedOptions } from './options.ts';

export interface ManagedDnsmasqSettings {
  managed: ManagedOptions;
  leaseFile: string;
  log: PluginLogger;
  /** How long dnsmasq may take to report it serves DHCP (default 10 s). */
  startTimeoutMs?: number;
  /** After SIGTERM, how long before SIGKILL (default 5 s). */
  stopGraceMs?: number;
  /** Delay before the first restart, doubled after each quick death up to `restartMaxMs` (defaults 500 ms, 30 s). */
  restartInitialMs?: number;
  restartMaxMs?: number;
}

/** A run this long counts as healthy: the next death restarts after the initial delay again. */
const STABLE_RUN_MS = 60_000;
/** Without the "DHCP, IP range" line (another dnsmasq version), a created lease file and this long alive will do. */
const FALLBACK_READY_MS = 1_000;
/** dnsmasq logs this once its DHCP sockets are bound. */
const READY_LINE = /DHCP, IP range/;
/** Per-lease chatter (DHCPDISCOVER, DHCPACK, ...) is logged at debug; everything else at info. */
const TRANSACTION_LINE = /\bDHCP(?:V6)?(?:DISCOVER|OFFER|REQUEST|ACK|NAK|RELEASE|INFORM|DECLINE|SOLICIT|ADVERTISE|REPLY|RENEW|REBIND|CONFIRM)\b/;

/** The dnsmasq command line; argv for spawn, no shell. */
export function dnsmasqArgv(managed: ManagedOptions, leaseFile: string): string[] {
  return [
    managed.dnsmasqBinary,
    // Stays our child (we see it die, and its log on stderr); daemon mode would also fork away and write a pid file.
    '--no-daemon',
    // The host's /etc/dnsmasq.conf must not add anything to this instance.
    '--conf-file=/dev/null',
    // Only the bridge, bound to it alone: coexists with other dnsmasq instances (libvirt's, a host resolver).
    `--interface=${managed.bridge}`,
    '--bind-interfaces',
    '--except-interface=lo',
    `--dhcp-range=${managed.rangeStart},${managed.rangeEnd},${managed.leaseTime}`,
    // The only DHCP server on the bridge: answer clients that ask for an address we never gave (after a restart).
    '--dhcp-authoritative',
    // Otherwise dnsmasq pings each address before offering it: ~3 s more per lease.
    '--no-ping',
    `--dhcp-leasefile=${leaseFile}`,
    // DHCP only: no DNS (port 0), so nothing to resolve with.
    '--no-resolv',
    '--no-hosts',
    '--port=0',
    // Log to stderr only (not also to syslog): the supervisor passes each line to the agent's logger.
    '--log-facility=-',
    ...managed.extraFlags,
  ];
}

/** Where the supervisor records dnsmasq's pid, to stop an instance left behind by an agent that was killed. */
export function pidFileFor(leaseFile: string): string {
  return `${leaseFile}.pid`;
}

interface Run {
  child: ChildProcess;
  startedAt: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last lines dnsmasq wrote, for error messages. */
  tail(): string;
  ready: boolean;
}

export class ManagedDnsmasq {
  readonly #settings: Required<Omit<ManagedDnsmasqSettings, 'log'>> & { log: PluginLogger };
  #run: Run | undefined;
  #launching: Promise<void> | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  #quickDeaths = 0;
  #stopping = false;

  private constructor(settings: ManagedDnsmasqSettings) {
    this.#settings = { startTimeoutMs: 10_000, stopGraceMs: 5_000, restartInitialMs: 500, restartMaxMs: 30_000, ...settings };
  }

  /** Starts dnsmasq and resolves once it serves DHCP; throws DNSMASQ_START_FAILED when it does not. */
  static async start(settings: ManagedDnsmasqSettings): Promise<ManagedDnsmasq> {
    const supervisor = new ManagedDnsmasq(settings);
    const { leaseFile, log, managed } = supervisor.#settings;
    await checkPaths(leaseFile, managed.bridge);
    await stopLeftover(leaseFile, managed.bridge, supervisor.#settings.stopGraceMs, log);
    await supervisor.#launch();
    return supervisor;
  }

  get pid(): number | undefined {
    return this.#run?.child.exitCode === null && this.#run.child.signalCode === null ? this.#run.child.pid : undefined;
  }

  /** SIGTERM, then SIGKILL after the grace period; no restart afterwards. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#restartTimer);
    await this.#launching?.catch(() => undefined);
    const run = this.#run;
    if (run && run.child.exitCode === null && run.child.signalCode === null) {
      run.child.kill('SIGTERM');
      const killer = setTimeout(() => {
        this.#settings.log.warn({ pid: run.child.pid, graceMs: this.#settings.stopGraceMs }, 'dnsmasq ignored SIGTERM; sending SIGKILL');
        run.child.kill('SIGKILL');
      }, this.#settings.stopGraceMs);
      await run.exited;
      clearTimeout(killer);
    }
    // Gone, or something else now (a folder put there meanwhile): a stop still ends cleanly.
    await rm(pidFileFor(this.#settings.leaseFile), { force: true }).catch(() => undefined);
  }

  #launch(): Promise<void> {
    this.#launching = this.#startRun().finally(() => (this.#launching = undefined));
    return this.#launching;
  }

  async #startRun(): Promise<void> {
    const { managed, leaseFile, log, startTimeoutMs } = this.#settings;
    const argv = dnsmasqArgv(managed, leaseFile);
    const run = spawnDnsmasq(argv, log);
    this.#run = run;
    try {
      await waitUntilServing(run, leaseFile, startTimeoutMs);
    } catch (cause) {
      run.child.kill('SIGKILL');
      await run.exited;
      throw new CloudletError('DNSMASQ_START_FAILED', `dnsmasq on ${managed.bridge} did not start: ${(cause as Error).message}`, {
        cause,
        details: { argv, bridge: managed.bridge, output: run.tail() },
      });
    }
    try {
      await recordPid(pidFileFor(leaseFile), run.child.pid as number);
    } catch (cause) {
      // Unrecorded, it could not be found again after a killed agent: it must not run on.
      run.child.kill('SIGKILL');
      await run.exited;
      throw new CloudletError('DNSMASQ_START_FAILED', `dnsmasq on ${managed.bridge}: cannot record its pid in ${pidFileFor(leaseFile)}: ${(cause as Error).message}`, {
        cause,
        details: { bridge: managed.bridge, pidFile: pidFileFor(leaseFile) },
      });
    }
    log.info({ pid: run.child.pid, bridge: managed.bridge, range: [managed.rangeStart, managed.rangeEnd], leaseFile }, 'dnsmasq serves DHCP on the bridge');
    void run.exited.then((exit) => this.#onExit(run, exit));
  }

  #onExit(run: Run, exit: { code: number | null; signal: NodeJS.Signals | null }): void {
    if (this.#stopping || this.#run !== run) return;
    const ranMs = performance.now() - run.startedAt;
    this.#quickDeaths = ranMs >= STABLE_RUN_MS ? 0 : this.#quickDeaths + 1;
    const delayMs = this.#restartDelay();
    this.#settings.log.error({ code: exit.code, signal: exit.signal, ranMs: Math.round(ranMs), restartInMs: delayMs, output: run.tail() }, 'dnsmasq exited; restarting it');
    this.#scheduleRestart(delayMs);
  }

  #restartDelay(): number {
    const { restartInitialMs, restartMaxMs } = this.#settings;
    return Math.min(restartMaxMs, restartInitialMs * 2 ** Math.max(0, this.#quickDeaths - 1));
  }

  #scheduleRestart(delayMs: number): void {
    this.#restartTimer = setTimeout(() => {
      if (this.#stopping) return;
      this.#launch().catch((error: unknown) => {
        if (this.#stopping) return;
        this.#quickDeaths++;
        const next = this.#restartDelay();
        this.#settings.log.error({ err: error, code: (error as { code?: string }).code, restartInMs: next }, 'dnsmasq restart failed; trying again');
        this.#scheduleRestart(next);
      });
    }, delayMs);
    // A pending restart must not keep an agent that is otherwise done from exiting.
    this.#restartTimer.unref();
  }
}

/** Names the supervising process in dnsmasq's environment: see supervisorOf. */
const SUPERVISOR_ENV = 'CLOUDLET_DNSMASQ_SUPERVISOR';

function spawnDnsmasq(argv: string[], log: PluginLogger): Run {
  const [binary, ...args] = argv as [string, ...string[]];
  // A process group of its own: Ctrl-C at the agent's terminal reaches the agent, which stops dnsmasq in its
  // stop hook, and not dnsmasq directly (the supervisor would restart it in the middle of the shutdown).
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: { ...process.env, [SUPERVISOR_ENV]: String(process.pid) } });
  liveChildren.add(child);
  void child.once('close', () => liveChildren.delete(child));
  const lines: string[] = [];
  const run: Run = {
    child,
    startedAt: performance.now(),
    exited: new Promise((resolve) => {
      // A spawn error (no such binary) comes instead of a spawn and then, with no exit, a close.
      child.once('error', (error) => lines.push(`spawn failed: ${error.message}`));
      child.once('close', (code, signal) => resolve({ code, signal }));
    }),
    tail: () => lines.slice(-10).join('\n'),
    ready: false,
  };
  let partial = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    const text = partial + chunk;
    const complete = text.split('\n');
    partial = complete.pop() ?? '';
    for (const line of complete.map((l) => l.trim()).filter(Boolean)) {
      lines.push(line);
      if (lines.length > 50) lines.shift();
      if (READY_LINE.test(line)) run.ready = true;
      if (TRANSACTION_LINE.test(line)) log.debug({ dnsmasq: line }, 'dnsmasq');
      else log.info({ dnsmasq: line }, 'dnsmasq');
    }
  });
  return run;
}

async function waitUntilServing(run: Run, leaseFile: string, timeoutMs: number): Promise<void> {
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void run.exited.then((value) => (exit = value));
  for (;;) {
    const elapsed = performance.now() - run.startedAt;
    if (exit) throw new Error(`it exited with ${exit.code ?? exit.signal}${run.tail() ? `: ${run.tail()}` : ''}`);
    if (run.ready) return;
    if (elapsed >= FALLBACK_READY_MS && (await exists(leaseFile)) && run.child.exitCode === null) return;
    if (elapsed >= timeoutMs) throw new Error(`it did not report serving DHCP within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * The lease folder must be a folder, and the lease and pid files regular files (or absent). dnsmasq runs as
 * root here: a symlink would have it, or the pid record, overwrite whatever the link names; a FIFO would
 * block the read of the pid, and dnsmasq's own start.
 */
async function checkPaths(leaseFile: string, bridge: string): Promise<void> {
  const refuse = (message: string, path: string) => new CloudletError('DNSMASQ_START_FAILED', `dnsmasq on ${bridge}: ${message}`, { details: { bridge, path } });
  const folder = dirname(leaseFile);
  // The folder may be reached through a symlink (state on another disk): only what it is counts.
  const folderInfo = await stat(folder).catch(() => undefined);
  if (folderInfo && !folderInfo.isDirectory()) throw refuse(`${folder} must be a folder (for the lease file), but it is ${kindOf(folderInfo)}`, folder);
  if (!folderInfo) await mkdir(folder, { recursive: true });
  for (const [what, path] of [['lease file', leaseFile], ['pid file', pidFileFor(leaseFile)]] as const) {
    const info = await lstat(path).catch(() => undefined);
    if (info && !info.isFile()) throw refuse(`the ${what} ${path} must be a regular file, but it is ${kindOf(info)}; remove it`, path);
  }
}

function kindOf(info: Stats): string {
  if (info.isSymbolicLink()) return 'a symlink';
  if (info.isDirectory()) return 'a folder';
  if (info.isFIFO()) return 'a FIFO';
  if (info.isFile()) return 'a file';
  return 'a special file';
}

/**
 * Written whole under a temporary name, then renamed: never through a link someone put at the pid file's
 * path. A temporary file a crash left (a container reuses pids) is removed first; unlink does not follow
 * a link either.
 */
async function recordPid(pidFile: string, pid: number): Promise<void> {
  const temp = `${pidFile}.${process.pid}.tmp`;
  await rm(temp, { force: true });
  await writeFile(temp, `${pid}\n`, { flag: 'wx' });
  await rename(temp, pidFile).catch(async (error: unknown) => {
    await rm(temp, { force: true });
    throw error;
  });
}

/**
 * Stops the dnsmasq a killed agent left running on this lease file: it would hold the DHCP port. It is found
 * on the bridge by its command line, so a pid file deleted since (a cleaned state folder) hides nothing; the
 * pid file also finds one started for another bridge. One whose parent still runs belongs to a running agent
 * (a killed agent's child is re-parented to init): that agent serves this bridge, and a second DHCP server on
 * it would hand out conflicting addresses. Refused, not killed. So is any other dnsmasq this way managing the
 * same bridge with another lease file.
 */
async function stopLeftover(leaseFile: string, bridge: string, graceMs: number, log: PluginLogger): Promise<void> {
  const leftovers = new Set<number>();
  for (const other of await managedOn(bridge)) {
    refuseIfSupervised(other.pid, await supervisorOf(other.pid), bridge, other.leaseFile);
    // Unsupervised, on another lease file: left by an agent that is gone and had another config (or started
    // by hand). Not ours to kill, and a second DHCP server beside it would hand out conflicting addresses.
    if (other.leaseFile !== leaseFile) {
      throw new CloudletError('DNSMASQ_START_FAILED', `dnsmasq pid ${other.pid} already serves DHCP on ${bridge} with another lease file (${other.leaseFile}) and no agent supervises it (left by an agent that is gone, or started by hand): stop it (kill ${other.pid}) before starting this agent`, {
        details: { bridge, pid: other.pid, leaseFile: other.leaseFile },
      });
    }
    leftovers.add(other.pid);
  }
  const pidFile = pidFileFor(leaseFile);
  const recorded = Number.parseInt(await readFile(pidFile, 'utf8').catch(() => ''), 10);
  // The pid may have been reused since: only a dnsmasq writing this very lease file is ours.
  if (recorded > 0 && !leftovers.has(recorded) && (await readFile(`/proc/${recorded}/cmdline`, 'utf8').catch(() => '')).split('\0').includes(`--dhcp-leasefile=${leaseFile}`)) {
    refuseIfSupervised(recorded, await supervisorOf(recorded), bridge, leaseFile);
    leftovers.add(recorded);
  }
  for (const pid of leftovers) {
    log.warn({ pid, leaseFile }, 'stopping a dnsmasq left running by an earlier agent');
    signal(pid, 'SIGTERM', bridge);
  }
  const deadline = performance.now() + graceMs;
  while ([...leftovers].some(alive) && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 25));
  for (const pid of leftovers) if (alive(pid)) signal(pid, 'SIGKILL', bridge);
  await rm(pidFile, { force: true });
}

function refuseIfSupervised(pid: number, supervisor: number | undefined, bridge: string, leaseFile: string): void {
  if (supervisor === undefined) return;
  throw new CloudletError('DNSMASQ_START_FAILED', `dnsmasq pid ${pid} already serves DHCP on ${bridge} (lease file ${leaseFile}) for process ${supervisor} (another agent?); two DHCP servers on one bridge give out conflicting addresses`, {
    details: { bridge, pid, parent: supervisor, leaseFile },
  });
}

/**
 * dnsmasq processes started the way this module starts them for `bridge`, in this network namespace (a
 * bridge of the same name in another namespace is another bridge): pid and lease file.
 */
async function managedOn(bridge: string): Promise<{ pid: number; leaseFile: string }[]> {
  const found: { pid: number; leaseFile: string }[] = [];
  const ownNetwork = await readlink('/proc/self/ns/net').catch(() => undefined);
  const entries = await readdir('/proc').catch(() => [] as string[]);
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!argv.includes('--no-daemon') || !argv.includes(`--interface=${bridge}`)) continue;
    const network = await readlink(`/proc/${entry}/ns/net`).catch(() => undefined);
    if (ownNetwork !== undefined && network !== undefined && network !== ownNetwork) continue;
    const leaseFile = argv.find((arg) => arg.startsWith('--dhcp-leasefile='))?.slice('--dhcp-leasefile='.length);
    if (leaseFile !== undefined) found.push({ pid: Number(entry), leaseFile });
  }
  return found;
}

/**
 * The live process supervising dnsmasq `pid`, if any: its parent, when that is the supervisor named in its
 * environment (SUPERVISOR_ENV, set when it was started). A killed agent's dnsmasq is re-parented to init, or
 * to the nearest subreaper (systemd --user, tini), which only that name tells apart from a supervisor.
 * Without it (a dnsmasq of an older agent, or another user's, whose environment cannot be read), any live
 * parent but init counts.
 */
async function supervisorOf(pid: number): Promise<number | undefined> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const parent = Number(/^PPid:\s+(\d+)$/m.exec(status)?.[1]);
  if (!(parent > 1 && alive(parent))) return undefined;
  const environment = (await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '')).split('\0');
  const named = Number(environment.find((entry) => entry.startsWith(`${SUPERVISOR_ENV}=`))?.slice(SUPERVISOR_ENV.length + 1));
  return named > 0 && named !== parent ? undefined : parent;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it runs, as another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function signal(pid: number, name: NodeJS.Signals, bridge: string): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return;
    if (code === 'EPERM') {
      throw new CloudletError('DNSMASQ_START_FAILED', `dnsmasq pid ${pid}, left running on ${bridge} by an earlier agent, belongs to another user and cannot be stopped by this one; stop it, then start the agent again`, {
        details: { bridge, pid },
      });
    }
    throw error;
  }
}

/**
 * dnsmasq children still running in this process. An agent that exits at once (a second SIGTERM) runs no
 * stop hook: they are killed as the process exits, rather than left serving a bridge nobody supervises.
 */
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
