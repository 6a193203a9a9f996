/**
 * Where the local transport's unix socket lives, and the checks that make it safe to create, remove and
 * trust: the agent removes only a socket no agent listens on, and nobody uses a per-user folder in a shared
 * temp directory that another user made first.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { lstat, mkdir, realpath, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { basename, dirname, join, sep } from 'node:path';
import { tmpdir } from 'node:os';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { FLAGS } from '../cli/args.ts';
import { seconds } from '../cli/output.ts';
import { cloudletError } from '../errors.ts';

/** `/run/cloudlet/agent.sock` for root (a system service); a per-user path otherwise. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (process.getuid?.() === 0) return '/run/cloudlet/agent.sock';
  const runtimeDir = env.XDG_RUNTIME_DIR || sharedTempFolder();
  return join(runtimeDir, 'cloudlet', 'agent.sock');
}

/** The per-user folder used without XDG_RUNTIME_DIR (under sudo or cron): in /tmp, which everyone can write. */
function sharedTempFolder(): string {
  return join(tmpdir(), `cloudlet-${process.getuid?.() ?? 'user'}`);
}

/**
 * Anyone can make `/tmp/cloudlet-<uid>` before its user does, and then swap the agent's socket for one of
 * their own. For a socket under that folder, the folder must be this user's own, a real folder, and closed
 * to others; `create` makes it so (mode 0700) when it does not exist yet.
 */
export async function checkSocketFolder(socketPath: string, options: { create: boolean }): Promise<void> {
  const folder = sharedTempFolder();
  if (!socketPath.startsWith(folder + sep)) return;
  if (options.create) await mkdir(folder, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EEXIST') throw error;
  });
  const info = await lstat(folder).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!info) return; // nothing there yet: the client's connect fails with ENOENT as usual
  const uid = process.getuid?.();
  const problem = info.isSymbolicLink()
    ? 'is a symbolic link'
    : !info.isDirectory()
      ? 'is not a folder'
      : uid !== undefined && info.uid !== uid
        ? `belongs to uid ${info.uid}, not to this user (uid ${uid})`
        : (info.mode & 0o022) !== 0
          ? `can be written by others (mode ${(info.mode & 0o777).toString(8)})`
          : undefined;
  if (problem) {
    throw cloudletError(
      'SOCKET_UNSAFE',
      `${folder} ${problem}: another user could put their own socket in the agent's place; remove it, set XDG_RUNTIME_DIR, or configure transport.socket`,
      { socketPath, folder },
    );
  }
}

/**
 * A socket file left by a crashed agent is removed; one an agent still listens on is not. Only a refused
 * connection proves nobody listens: a stalled agent with a full backlog answers EAGAIN, another user's agent
 * EACCES, and neither socket may be taken. A file that is not a socket is never removed (a typo in
 * transport.socket must not delete it).
 */
export async function removeStaleSocket(socketPath: string): Promise<void> {
  const info = await lstat(socketPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!info) return;
  if (!info.isSocket()) {
    throw cloudletError('SOCKET_UNSAFE', `${socketPath} exists and is not a socket; the agent will not replace it. Remove it or configure another transport.socket`, {
      socketPath,
    });
  }
  await refuseIfServed(socketPath);
  await unlink(socketPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
  });
}

/** AGENT_ALREADY_RUNNING unless connecting to the socket path is refused or finds nothing there. */
async function refuseIfServed(socketPath: string): Promise<void> {
  const refusedWith = await new Promise<string | undefined>((resolve) => {
    const probe = createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(undefined);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
  if (refusedWith === 'ECONNREFUSED' || refusedWith === 'ENOENT') return;
  throw cloudletError(
    'AGENT_ALREADY_RUNNING',
    refusedWith === undefined
      ? `another agent is already listening on ${socketPath}; stop it first or configure another transport.socket`
      : `an agent may be listening on ${socketPath} (connecting gave ${refusedWith}, not a refusal); stop it first or configure another transport.socket`,
    { socketPath, ...(refusedWith === undefined ? {} : { cause: refusedWith }) },
  );
}

/** What a lock's holder is doing, as it tells a start that finds the lock held. */
export type SocketPathLockState = 'starting' | 'running' | 'stopping';

/** Held by the agent that serves a socket path, from before its plugins start until it has stopped. */
export interface SocketPathLock {
  /** False when the agent went on without it (see lockSocketPath). */
  held: boolean;
  /** What the holder tells a start that connects to the lock ('starting' until told otherwise). */
  setState(state: SocketPathLockState): void;
  release(): Promise<void>;
}

export interface SocketPathLockOptions {
  /** How long to wait for a lock whose holder does not serve the path (an agent starting, or a squatter). */
  waitMs?: number;
  /**
   * How long to wait for a holder that says it is stopping: its in-flight work drains (shutdown.graceMs),
   * then its stop hooks run. A restart by hand or by a supervisor that does not wait for the old process
   * then waits for it instead of failing. Default: waitMs.
   */
  stoppingWaitMs?: number;
  /** Told once when the start waits for an agent that is stopping. */
  onWaiting?: (message: string) => void;
  /** Told when the lock could not be had and the agent goes on without it. */
  onUnavailable?: (message: string) => void;
}

/** The lock's abstract socket name (Linux): from the socket path's real location. */
export async function socketLockName(socketPath: string): Promise<string> {
  const where = join(await realpath(dirname(socketPath)), basename(socketPath));
  return `\0cloudlet-agent-socket:${createHash('sha256').update(where).digest('hex')}`;
}

const LOCK_POLL_MS = 50;

/**
 * One agent per socket path. Checking for a stale socket, removing it and binding a new one are three
 * steps: two agents started together could both find the old file dead, and the second would remove the
 * socket the first had just bound (the first then served nobody, and its stop removed the second's socket).
 * So an agent first takes this lock, before any of its plugins starts, and keeps it until it has stopped,
 * stop hooks included: an abstract unix socket (Linux) named after the socket path's real location. The
 * kernel frees it when the process dies, so a crash leaves no stale lock. A second agent is thus refused
 * before its hooks touch what the first one runs (a managed dnsmasq, VMs, a metrics port).
 *
 * The holder tells whoever connects what it is doing (`starting`, `running`, `stopping`). A lock held while
 * nothing serves the path is waited for up to `waitMs`, or `stoppingWaitMs` once the holder says it is
 * stopping (a restart that did not wait for the old agent to exit). Then the holder is looked up
 * (onHeldLock): this user's own process is AGENT_ALREADY_RUNNING; another user's (an abstract name is not a
 * file: any local user can take it) is gone around, and the agent starts without the lock (`onUnavailable`
 * says why) rather than let another user keep it from starting. A lock held by an agent that serves the path
 * is AGENT_ALREADY_RUNNING at once. Abstract names belong to a network namespace: agents in different
 * namespaces that share one socket path through the file system are not kept apart by it.
 */
export async function lockSocketPath(socketPath: string, options: SocketPathLockOptions = {}): Promise<SocketPathLock> {
  const name = await socketLockName(socketPath);
  const waitMs = options.waitMs ?? 2_000;
  let giveUpAt = Date.now() + waitMs;
  let waitedForStop = false;
  let said: SocketPathLockState | undefined;
  for (;;) {
    const state = { current: 'starting' as SocketPathLockState };
    const server = await listenOrInUse(name, () => state.current);
    if (server) return heldBy(server, state);
    await refuseIfServed(socketPath);
    // Asked until it says it is stopping; after that it only releases, and the wait is set.
    if (!waitedForStop) said = (await holderSays(name)) ?? said;
    if (said === 'stopping' && !waitedForStop) {
      waitedForStop = true;
      giveUpAt = Math.max(giveUpAt, Date.now() + (options.stoppingWaitMs ?? waitMs));
      options.onWaiting?.(`another agent is stopping on ${socketPath}; waiting up to ${seconds(options.stoppingWaitMs ?? waitMs)} for it to finish`);
    }
    if (Date.now() >= giveUpAt) {
      const search = findLockHolder(name);
      // Gone while it was looked for (its agent finished stopping): the lock is free, take it.
      const freed = search.holder ? undefined : await listenOrInUse(name, () => state.current);
      if (freed) return heldBy(freed, state);
      const decision = onHeldLock({ ...search, ...(said ? { said } : {}) }, process.getuid?.());
      if (decision.refuse) throw cloudletError('AGENT_ALREADY_RUNNING', `${socketPath}: ${decision.refuse}; stop it first or configure another transport.socket`, { socketPath, ...decision.details });
      options.onUnavailable?.(`the start-up lock for ${socketPath} is held by ${decision.holder}, which does not serve it; starting without the lock`);
      return { held: false, setState: () => undefined, release: async () => undefined };
    }
    await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
  }
}

function heldBy(server: Server, state: { current: SocketPathLockState }): SocketPathLock {
  // The agent's own socket and work keep the process alive, not its lock.
  server.unref();
  return {
    held: true,
    setState: (next) => void (state.current = next),
    // Closing the listener frees the name at once; connections to it are cut as they come, so none can
    // hold up a release.
    release: async () => void server.close(),
  };
}

/**
 * What the lock's holder says it is doing: one line, read within half a second. Anyone can take an
 * abstract name, so this only decides how long to wait (never longer than stoppingWaitMs), not whether.
 */
async function holderSays(name: string): Promise<SocketPathLockState | undefined> {
  return new Promise((resolve) => {
    const probe = createConnection(name);
    let text = '';
    const done = () => {
      clearTimeout(timer);
      probe.destroy();
      const word = text.split('\n')[0];
      resolve(word === 'starting' || word === 'running' || word === 'stopping' ? word : undefined);
    };
    const timer = setTimeout(done, 500);
    probe.setEncoding('utf8');
    probe.on('data', (chunk: string) => {
      text += chunk;
      if (text.includes('\n') || text.length > 64) done();
    });
    probe.on('end', done);
    probe.on('error', done);
  });
}

/** What the search for a held lock's holder found. */
export interface LockHolderSearch {
  holder?: { pid: number; uid: number };
  /** What the holder said it was doing, when it answered (an agent does). */
  said?: SocketPathLockState;
  /** Processes of this user running cloudlet's agent whose open files it may not read (they hold capabilities it lacks). */
  uninspectedOwn: number[];
}

/**
 * Pure: whether a start may go on without a lock that stayed held while nothing answered on the path.
 * Only when the holder is another user's: this user's own process (an agent whose socket file was removed
 * by hand, or one stuck starting or stopping), or one of this user's cloudlet agents that could not be
 * looked into (one with capabilities this one lacks), may be an agent, and going on would put two on one path.
 */
export function onHeldLock(search: LockHolderSearch, uid: number | undefined): { refuse?: string; details?: Record<string, unknown>; holder?: string } {
  const { holder, uninspectedOwn, said } = search;
  if (holder && holder.uid === uid) {
    const doing =
      said === 'starting'
        ? 'is an agent still starting on this socket path (its plugins are starting)'
        : said === 'stopping'
          ? 'is an agent still stopping on this socket path after the wait (its in-flight work or stop hooks have not finished)'
          : said === 'running'
            ? 'is an agent that runs on this socket path, but nothing answers there (was its socket file removed?)'
            : 'holds the start-up lock for this socket path but nothing answers there (an agent whose socket file was removed, or one stuck starting or stopping)';
    return { refuse: `process ${holder.pid} ${doing}`, details: { holderPid: holder.pid, ...(said ? { holderState: said } : {}) } };
  }
  if (!holder && uninspectedOwn.length > 0) {
    return {
      refuse: `the start-up lock for this socket path is held and nothing answers there; cloudlet agents ${uninspectedOwn.join(', ')} of this user could not be looked into (they hold capabilities this one lacks), and one of them may hold it`,
      details: { uninspectedPids: uninspectedOwn },
    };
  }
  return { holder: holder ? `process ${holder.pid} of uid ${holder.uid}` : 'a process this user cannot see' };
}

/**
 * Which process listens on an abstract socket, as far as this user can see: /proc/net/unix gives the
 * socket's inode (abstract names shown with `@`), /proc/<pid>/fd the process holding it. Another user's
 * process is visible only to root. Synchronous: /proc is in memory, and this runs only at a start that
 * found the lock held. Processes that end meanwhile are skipped.
 */
function findLockHolder(name: string): LockHolderSearch {
  const search: LockHolderSearch = { uninspectedOwn: [] };
  const shown = `@${name.slice(1)}`;
  let table = '';
  try {
    table = readFileSync('/proc/net/unix', 'utf8');
  } catch {
    return search;
  }
  const inodes = new Set<string>();
  for (const line of table.split('\n')) {
    const fields = line.trim().split(/\s+/);
    // Node binds the whole sun_path, so the name is padded with NULs, shown as trailing `@`s.
    if (fields[7]?.replace(/@+$/, '') === shown && fields[6] !== undefined) inodes.add(`socket:[${fields[6]}]`);
  }
  if (inodes.size === 0) return search;
  const uid = process.getuid?.();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return search;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${entry}/fd`);
    } catch (error) {
      // A capability-bounded agent (the shipped service unit) cannot look into any process with more
      // capabilities than its own, pid 1 included; only those that run cloudlet's agent count.
      if ((error as NodeJS.ErrnoException).code === 'EACCES' && ownedBy(`/proc/${entry}`) === uid && looksLikeAgent(commandLine(entry))) {
        search.uninspectedOwn.push(Number(entry));
      }
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${entry}/fd/${fd}`);
      } catch {
        continue;
      }
      if (inodes.has(target)) {
        const owner = ownedBy(`/proc/${entry}`);
        if (owner !== undefined) return { holder: { pid: Number(entry), uid: owner }, uninspectedOwn: [] };
      }
    }
  }
  return search;
}

/**
 * Pure: a command line that runs `cloudlet agent`: the installed command (`/usr/bin/cloudlet agent …`,
 * `node /usr/bin/cloudlet agent …`) or a checkout's `core/cli/bin.js agent …`. Anyone can read a process's
 * command line, even where its open files are closed to them.
 */
export function looksLikeAgent(argv: readonly string[]): boolean {
  const command = argv.findIndex((arg) => basename(arg) === 'cloudlet' || arg.endsWith('/core/cli/bin.js') || arg === 'core/cli/bin.js');
  if (command < 0) return false;
  // Read as the CLI reads it: the command is the first word that is not a flag or a flag's value, so
  // `cloudlet --config x agent` is an agent and `cloudlet vm list --host agent` is not.
  const { positionals } = parseArgs({ args: argv.slice(command + 1), options: FLAGS, allowPositionals: true, strict: false });
  return positionals[0] === 'agent';
}

function commandLine(pid: string): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

function ownedBy(path: string): number | undefined {
  try {
    return statSync(path).uid;
  } catch {
    return undefined;
  }
}

/** A listener on `name` that tells each connection `state()` and cuts it, or undefined when the name is in use. */
async function listenOrInUse(name: string, state: () => SocketPathLockState): Promise<Server | undefined> {
  const server = createServer((connection) => {
    connection.on('error', () => undefined);
    // The line stays readable after the cut (unix sockets queue it on the reader's side).
    connection.write(`${state()}\n`, () => connection.destroy());
    connection.unref();
  });
  return new Promise<Server | undefined>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)));
    server.listen(name, () => resolve(server));
  });
}
