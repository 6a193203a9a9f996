/**
 * One agent per folder of lasting state (qemu-backend's stateDir). The socket path's lock keeps two agents
 * off one socket, but two agents with different sockets or host ids could share a state folder: the second
 * would re-attach the first's VMs, and its start-up clean-up would end a create the first was running. A
 * plugin therefore holds its folder (`ctx.holdFolder`) from its start hook until the agent has stopped.
 *
 * The lock is an abstract unix socket named after the folder's device and inode (abstract-lock.ts: freed by
 * the kernel when the process dies). Its holder answers with one JSON line: what its agent is doing, its
 * host id, its plugin and its pid. A start waits for a holder that says it is stopping (a restart that did
 * not wait for the old agent), and is refused at once by one that is starting or running.
 */
import { createHash } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import type { Server } from 'node:net';
import process from 'node:process';
import { askLockHolder, findLockHolder, listenOrInUse, pauseOrCallOff, type LockHolderFound } from './abstract-lock.ts';
import { seconds } from './cli/output.ts';
import { cloudletError } from './errors.ts';

export type FolderHolderState = 'starting' | 'running' | 'stopping';

/** What a folder lock's holder says of itself. */
export interface FolderHolder {
  state: FolderHolderState;
  host: string;
  plugin: string;
  pid: number;
}

export interface FolderLock {
  /** The folder's real path. */
  folder: string;
  /** Its identity (FolderIdentity.key), as the lock is named. */
  key: string;
  /** False when another user's process squats the lock's name and the agent went on without it. */
  held: boolean;
  release(): Promise<void>;
}

export interface FolderLockOptions {
  /** This agent's host id and the plugin that holds the folder: what a second agent is told. */
  host: string;
  plugin: string;
  /** What this agent is doing now, told to whoever asks the lock. */
  state(): FolderHolderState;
  /** The plugin's setting that names the folder (`stateDir`), for the refusal's advice. */
  setting?: string;
  /** How long to wait for a holder that says it is stopping. */
  stoppingWaitMs: number;
  /** Ends a wait for another holder with LockWaitCalledOff (the agent was told to stop meanwhile). */
  signal?: AbortSignal;
  onWaiting?: (message: string) => void;
  onUnavailable?: (message: string) => void;
}

const POLL_MS = 50;

/** The lock's abstract name, from the folder's identity (FolderIdentity.key). */
export function folderLockName(key: string): string {
  return `\0cloudlet-folder:${createHash('sha256').update(key).digest('hex')}`;
}

/** A folder as the lock knows it. */
export interface FolderIdentity {
  /** Its real path, for messages. */
  folder: string;
  /**
   * Its device and inode: the same folder however it is reached (a symbolic link, `..`, another bind mount),
   * and different folders at one path in different mount namespaces (containers) stay apart.
   */
  key: string;
}

export async function identifyFolder(path: string): Promise<FolderIdentity> {
  try {
    const folder = await realpath(path);
    const info = await stat(folder, { bigint: true });
    if (!info.isDirectory()) throw Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
    return { folder, key: `${info.dev}:${info.ino}` };
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    throw new Error(`cannot hold ${path}: ${code === 'ENOENT' ? 'it does not exist (create it before holding it)' : code === 'ENOTDIR' ? 'it is not a folder' : message}`);
  }
}

/** How long a holder that does not answer (busy, paused) is given to say what it is doing before it is judged. */
const SILENCE_MS = 2_000;
/** How often a start tries again when the lock went free while it was looked for (see lockFolder). */
const FREED_RETRIES = 20;

/**
 * Takes the folder's lock, waiting for a holder that is stopping; FOLDER_IN_USE when another agent has it.
 * The holder is asked every round: one that says `starting` or `running` refuses the start at once; one that
 * says `stopping` is waited for up to stoppingWaitMs, through moments it does not answer; one that never
 * answers is judged after SILENCE_MS (its process looked up, as the socket path's lock does).
 */
export async function lockFolder(path: string | FolderIdentity, options: FolderLockOptions): Promise<FolderLock> {
  // A caller that has identified the folder already (to see whether it holds it) passes what it found.
  const { folder, key } = typeof path === 'string' ? await identifyFolder(path) : path;
  const name = folderLockName(key);
  const line = () => JSON.stringify({ state: options.state(), host: options.host, plugin: options.plugin, pid: process.pid } satisfies FolderHolder);
  let said: FolderHolder | undefined;
  let giveUpAt: number | undefined;
  let silentUntil: number | undefined;
  let retries = 0;
  for (;;) {
    const server = await listenOrInUse(name, line);
    if (server) return { folder, key, held: true, release: async () => void server.close() };
    const answer = parseHolder(await askLockHolder(name));
    if (answer) said = answer;
    const now = Date.now();
    if (said?.state === 'stopping') {
      if (giveUpAt === undefined) {
        giveUpAt = now + options.stoppingWaitMs;
        options.onWaiting?.(`the agent of host "${said.host}" (process ${said.pid}) is stopping and still holds ${folder}; waiting up to ${seconds(options.stoppingWaitMs)} for it to finish`);
      }
      if (now < giveUpAt) {
        await pauseOrCallOff(POLL_MS, options.signal, () => `the agent of host "${said?.host}" (process ${said?.pid}) to stop and release ${folder}`);
        continue;
      }
    } else if (!answer && said === undefined) {
      // Silent so far: a holder that is busy (a paused process, a loaded host) gets a moment to answer.
      silentUntil ??= now + SILENCE_MS;
      if (now < silentUntil) {
        await pauseOrCallOff(POLL_MS, options.signal, () => `the holder of ${folder}'s lock to answer`);
        continue;
      }
    }
    const search = findLockHolder(name);
    if (search.listed === false && retries < FREED_RETRIES) {
      // Free again (its holder ended while it was looked at): take it, or hear from whoever took it first.
      retries++;
      continue;
    }
    // What was said counts only if it came from the process that holds the lock now (the one that said it
    // may have ended and another taken the lock without a word).
    const holderSaid = said && search.holder && said.pid !== search.holder.pid ? undefined : said;
    const decision = onHeldFolder(folder, search, holderSaid, process.getuid?.(), options);
    if (decision.refuse) throw cloudletError('FOLDER_IN_USE', decision.refuse, { folder, plugin: options.plugin, ...decision.details });
    options.onUnavailable?.(`the lock on ${folder} is held by ${decision.holder}, which is not a cloudlet agent of this user; going on without it`);
    return { folder, key, held: false, release: async () => undefined };
  }
}

/** The holder's line, or undefined when it is not one a folder lock writes (anyone can take the name). */
export function parseHolder(line: string | undefined): FolderHolder | undefined {
  if (line === undefined) return undefined;
  try {
    const value = JSON.parse(line) as Partial<FolderHolder>;
    const states: unknown[] = ['starting', 'running', 'stopping'];
    if (states.includes(value.state) && typeof value.host === 'string' && typeof value.plugin === 'string' && Number.isInteger(value.pid)) return value as FolderHolder;
  } catch {
    // not JSON: not ours
  }
  return undefined;
}

/**
 * Pure: refuse, or go on without the lock. As with the socket path's lock, only another user's process is
 * gone around (any local user can take an abstract name, and must not keep the agent from starting); a
 * process of this user, or an agent of this user that could not be looked into, may be an agent using the
 * folder.
 */
export function onHeldFolder(
  folder: string,
  search: LockHolderFound,
  said: FolderHolder | undefined,
  uid: number | undefined,
  options: Pick<FolderLockOptions, 'plugin' | 'setting'>,
): { refuse?: string; details?: Record<string, unknown>; holder?: string } {
  const { holder, uninspectedOwn } = search;
  const advice = `two agents must not share it: stop the other agent, or give each its own ${options.setting ? `${options.setting} (plugin "${options.plugin}")` : 'folder'}`;
  if (holder && holder.uid === uid) {
    const who = said
      ? `the agent of host "${said.host}" (process ${holder.pid}, plugin "${said.plugin}", ${said.state === 'stopping' ? 'still stopping after the wait' : said.state})`
      : `process ${holder.pid}, which does not say what it is doing`;
    return {
      refuse: `${folder} is in use by ${who}; ${advice}`,
      details: { holderPid: holder.pid, ...(said ? { holderHost: said.host, holderPlugin: said.plugin, holderState: said.state } : {}) },
    };
  }
  if (!holder && uninspectedOwn.length > 0) {
    return {
      refuse: `${folder} is locked, and cloudlet agents ${uninspectedOwn.join(', ')} of this user could not be looked into (they hold capabilities this one lacks), so one of them may be using it; ${advice}`,
      details: { uninspectedPids: uninspectedOwn },
    };
  }
  return { holder: holder ? `process ${holder.pid} of uid ${holder.uid}` : 'a process this user cannot see' };
}
