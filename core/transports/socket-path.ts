/**
 * Where the local transport's unix socket lives, and the checks that make it safe to create, remove and
 * trust: the agent removes only a socket no agent listens on, and nobody uses a per-user folder in a shared
 * temp directory that another user made first.
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, realpath, unlink } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { basename, dirname, join, sep } from 'node:path';
import { tmpdir } from 'node:os';
import process from 'node:process';
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
  const refusedWith = await new Promise<string | undefined>((resolve) => {
    const probe = createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(undefined);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
  if (refusedWith === 'ECONNREFUSED' || refusedWith === 'ENOENT') {
    await unlink(socketPath).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
    return;
  }
  throw cloudletError(
    'AGENT_ALREADY_RUNNING',
    refusedWith === undefined
      ? `another agent is already listening on ${socketPath}; stop it first or configure another transport.socket`
      : `an agent may be listening on ${socketPath} (connecting gave ${refusedWith}, not a refusal); stop it first or configure another transport.socket`,
    { socketPath, ...(refusedWith === undefined ? {} : { cause: refusedWith }) },
  );
}

/** Held by the agent that serves a socket path, from before it looks at the path until it has removed it. */
export interface SocketPathLock {
  release(): Promise<void>;
}

/**
 * One agent per socket path. Checking for a stale socket, removing it and binding a new one are three
 * steps: two agents started together could both find the old file dead, and the second would remove the
 * socket the first had just bound (the first then served nobody, and its stop removed the second's socket).
 * So an agent first takes this lock and keeps it until it has stopped: an abstract unix socket (Linux) named
 * after the socket path's real location. The kernel frees it when the process dies, so a crash leaves no
 * stale lock. Abstract names belong to a network namespace: agents in different namespaces that share one
 * socket path through the file system are not kept apart by it.
 */
export async function lockSocketPath(socketPath: string): Promise<SocketPathLock> {
  const where = join(await realpath(dirname(socketPath)), basename(socketPath));
  const name = `\0cloudlet-agent-socket:${createHash('sha256').update(where).digest('hex')}`;
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(name, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EADDRINUSE') throw error;
    throw cloudletError(
      'AGENT_ALREADY_RUNNING',
      `another agent on this host is starting, running or stopping on ${socketPath}; stop it first or configure another transport.socket`,
      { socketPath },
    );
  });
  // The agent's own socket and work keep the process alive, not its lock.
  server.unref();
  return { release: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}
