/**
 * One agent per folder of lasting state (qemu-backend's stateDir). The socket path's lock keeps two agents
 * off one socket, but two agents with different sockets or host ids could share a state folder: the second
 * would re-attach the first's VMs, and its start-up clean-up would end a create the first was running. A
 * plugin therefore holds its folder (`ctx.holdFolder`) from its start hook until the agent has stopped.
 *
 * The lock is an abstract unix socket named after the folder's real path (abstract-lock.ts: freed by the
 * kernel when the process dies). Its holder answers with one JSON line: what its agent is doing, its host id,
 * its plugin and its pid. A start waits for a holder that says it is stopping (a restart that did not wait
 * for the old agent), and is refused at once by one that is starting or running.
 */
import { createHash } from 'node:crypto';
import { realpath } from 'node:fs/promises';
import process from 'node:process';
import { askLockHolder, findLockHolder, listenOrInUse, type LockHolderFound } from './abstract-lock.ts';
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
  /** The folder's real path, as the lock is named. */
  folder: string;
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
  onWaiting?: (message: string) => void;
  onUnavailable?: (message: string) => void;
}

const POLL_MS = 50;

/** The lock's abstract name, from the folder's real path. */
export function folderLockName(folder: string): string {
  return `\0cloudlet-folder:${createHash('sha256').update(folder).digest('hex')}`;
}

/** Takes the folder's lock, waiting for a holder that is stopping; FOLDER_IN_USE when another agent has it. */
export async function lockFolder(path: string, options: FolderLockOptions): Promise<FolderLock> {
  const folder = await realFolder(path);
  const name = folderLockName(folder);
  const line = () => JSON.stringify({ state: options.state(), host: options.host, plugin: options.plugin, pid: process.pid } satisfies FolderHolder);
  let giveUpAt: number | undefined;
  for (;;) {
    const server = await listenOrInUse(name, line);
    if (server) return { folder, held: true, release: async () => void server.close() };
    const said = parseHolder(await askLockHolder(name));
    if (said?.state === 'stopping' && (giveUpAt === undefined || Date.now() < giveUpAt)) {
      if (giveUpAt === undefined) {
        giveUpAt = Date.now() + options.stoppingWaitMs;
        options.onWaiting?.(`the agent of host "${said.host}" (process ${said.pid}) is stopping and still holds ${folder}; waiting up to ${seconds(options.stoppingWaitMs)} for it to finish`);
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      continue;
    }
    const search = findLockHolder(name);
    // Gone while it was looked for: the lock is free, take it.
    const freed = search.holder ? undefined : await listenOrInUse(name, line);
    if (freed) return { folder, held: true, release: async () => void freed.close() };
    const decision = onHeldFolder(folder, search, said, process.getuid?.(), options);
    if (decision.refuse) throw cloudletError('FOLDER_IN_USE', decision.refuse, { folder, plugin: options.plugin, ...decision.details });
    options.onUnavailable?.(`the lock on ${folder} is held by ${decision.holder}, which is not a cloudlet agent of this user; going on without it`);
    return { folder, held: false, release: async () => undefined };
  }
}

/** The folder's real path: the lock is the same however it is named (a symbolic link, `..`). */
export async function realFolder(path: string): Promise<string> {
  return realpath(path).catch((error: NodeJS.ErrnoException) => {
    throw new Error(`cannot hold ${path}: ${error.code === 'ENOENT' ? 'it does not exist (create it before holding it)' : error.message}`);
  });
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
