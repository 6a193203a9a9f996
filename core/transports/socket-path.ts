/**
 * Where the local transport's unix socket lives, and the checks that make it safe to create, remove and
 * trust: the agent removes only a socket no agent listens on, and nobody uses a per-user folder in a shared
 * temp directory that another user made first.
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, realpath, unlink } from 'node:fs/promises';
import { createConnection, type Server } from 'node:net';
import { basename, dirname, join, sep } from 'node:path';
import { tmpdir } from 'node:os';
import process from 'node:process';
import { askLockHolder, findLockHolder, listenOrInUse, pauseOrCallOff, type LockHolderFound } from '../abstract-lock.ts';
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
  /** Ends the wait with LockWaitCalledOff (the agent was told to stop meanwhile). */
  signal?: AbortSignal;
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
    if (!waitedForStop) said = holderState(await askLockHolder(name)) ?? said;
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
    await pauseOrCallOff(LOCK_POLL_MS, options.signal, () => (said === 'stopping' ? `the agent stopping on ${socketPath} to finish` : `the holder of ${socketPath}'s start-up lock`));
  }
}

function heldBy(server: Server, state: { current: SocketPathLockState }): SocketPathLock {
  return {
    held: true,
    setState: (next) => void (state.current = next),
    // Closing the listener frees the name at once; connections to it are cut as they come, so none can
    // hold up a release.
    release: async () => void server.close(),
  };
}

/** What a socket path lock's holder says it is doing (one word); undefined for anything else. */
function holderState(line: string | undefined): SocketPathLockState | undefined {
  return line === 'starting' || line === 'running' || line === 'stopping' ? line : undefined;
}

/** What the search for a held lock's holder found, and what the holder said it was doing (an agent says). */
export interface LockHolderSearch extends LockHolderFound {
  said?: SocketPathLockState;
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

