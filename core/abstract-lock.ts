/**
 * Locks held as abstract unix socket names (Linux): whoever listens on the name holds the lock, and the
 * kernel frees it when the process dies, so a crash leaves no stale lock (Node has no flock without a
 * native addon). The holder answers each connection with one line saying what it is doing. Anyone can take
 * an abstract name, so a held lock is looked up (findLockHolder) before it is believed. Abstract names
 * belong to a network namespace: processes in different namespaces are not kept apart by them.
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { basename } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { FLAGS } from './cli/args.ts';

/**
 * A lock's wait ended because the start that waited was called off (the agent was told to stop while it
 * waited for another agent to finish stopping). The lock was not taken: the caller stops, it did not fail.
 */
export class LockWaitCalledOff extends Error {
  override name = 'LockWaitCalledOff';
  /** What the start was waiting for, for the agent's log line. */
  readonly waitingFor: string;

  constructor(waitingFor: string) {
    super(`the start was called off while it waited for ${waitingFor}`);
    this.waitingFor = waitingFor;
  }
}

/**
 * One round of a lock's wait: `ms`, cut short when `signal` aborts, after which (or when it had aborted
 * already) it throws LockWaitCalledOff naming `waitingFor()`.
 */
export async function pauseOrCallOff(ms: number, signal: AbortSignal | undefined, waitingFor: () => string): Promise<void> {
  // An aborted signal rejects the delay (at once if it was aborted already): told apart just below.
  await delay(ms, undefined, signal ? { signal } : {}).catch(() => undefined);
  if (signal?.aborted) throw new LockWaitCalledOff(waitingFor());
}

/** A listener on `name` that tells each connection `line()` and cuts it, or undefined when the name is in use. */
export async function listenOrInUse(name: string, line: () => string): Promise<Server | undefined> {
  const server = createServer((connection) => {
    connection.on('error', () => undefined);
    // The line stays readable after the cut (unix sockets queue it on the reader's side).
    connection.write(`${line()}\n`, () => connection.destroy());
    connection.unref();
  });
  const listening = await new Promise<Server | undefined>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)));
    server.listen(name, () => resolve(server));
  });
  // The holder's own work keeps its process alive, not its lock.
  listening?.unref();
  return listening;
}

/**
 * The first line the lock's holder says, read within half a second; undefined when it says nothing (not a
 * cloudlet lock, or gone). Anyone can take an abstract name: what it says may only shorten or lengthen a
 * wait, never grant anything.
 */
export async function askLockHolder(name: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const probe = createConnection(name);
    let text = '';
    const done = () => {
      clearTimeout(timer);
      probe.destroy();
      resolve(text.includes('\n') ? text.split('\n')[0] : undefined);
    };
    const timer = setTimeout(done, 500);
    probe.setEncoding('utf8');
    probe.on('data', (chunk: string) => {
      text += chunk;
      if (text.includes('\n') || text.length > 1024) done();
    });
    probe.on('end', done);
    probe.on('error', done);
  });
}

/** What the search for a held lock's holder found. */
export interface LockHolderFound {
  holder?: { pid: number; uid: number };
  /**
   * Whether the name is bound at all (/proc/net/unix lists it, whoever holds it): false means the lock went
   * free meanwhile. Undefined when the table cannot be read.
   */
  listed?: boolean;
  /** Processes of this user running cloudlet's agent whose open files it may not read (they hold capabilities it lacks). */
  uninspectedOwn: number[];
}

/**
 * Which process listens on an abstract socket, as far as this user can see: /proc/net/unix gives the
 * socket's inode (abstract names shown with `@`), /proc/<pid>/fd the process holding it. Another user's
 * process is visible only to root. Synchronous: /proc is in memory, and this runs only at a start that
 * found the lock held. Processes that end meanwhile are skipped.
 */
export function findLockHolder(name: string): LockHolderFound {
  const search: LockHolderFound = { uninspectedOwn: [] };
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
  search.listed = inodes.size > 0;
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
        if (owner !== undefined) return { holder: { pid: Number(entry), uid: owner }, listed: true, uninspectedOwn: [] };
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

