/**
 * A short claim on one VM id, for the few steps that judge a VM folder without vm.json and then act on it:
 * create-vm taking over its derived id (the leftover check, its removal, the `creating` mark) and cleaning
 * up after a failed start, delete-vm removing a leftover, the sweeper removing an orphan's folder or tap.
 * Each of them checks, then acts; without the claim one could check between another's check and act — a
 * delete or a sweep removing the folder a create has just begun in, or a tombstone written for a VM whose
 * create then goes on to answer "created". Under the claim the check and the act are one step for everyone
 * who takes it.
 *
 * The claim is a file, `<stateDir>/.claims/<vm id>`, created exclusively (O_EXCL): handlers run in worker
 * threads and the sweeper in the agent's main thread, so nothing in memory is shared by all of them. The
 * file names its holder and until when it holds. A holder cut off without releasing it (its thread stopped
 * after a cancel, its agent killed) leaves it; the next taker finds it stale — past its time, or its process
 * gone — and removes it. Nothing under a claim runs long (a SIGKILL awaited, a folder removed), so the time
 * it holds (HOLD_MS) is far more than any of them needs; only a step stuck past it (a hung disk) could lose
 * its claim while still at work.
 *
 * Removing a claim is the one step that must not race: a taker that judged a claim stale and then removes
 * "it" could remove a fresh one another taker made in between. So every removal — a holder's release, a
 * taker's removal of a stale claim — happens under a second exclusive file, `<vm id>.break`, and removes the
 * claim only if it is still the very one judged (same inode, same times, same bytes). Taking a claim needs no
 * such lock: O_EXCL alone lets one taker in. The break lock is held for a read and an unlink; one left by a
 * holder cut off in that instant is stale after BREAK_STALE_MS (or at once when its process is gone).
 */
import { randomUUID } from 'node:crypto';
import { lstat, mkdir, open, readFile, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';

/** Who holds a claim: named in the answer of whoever has to wait for it. */
export type ClaimHolder = 'create-vm' | 'delete-vm' | 'sweeper';

/** What a wait names when the claim cannot be read: one being written, or a file nobody here made. */
export const UNKNOWN_HOLDER = 'an unknown holder';

/** How long a claim holds at most. The steps under one take seconds at worst (SIGKILL awaited 5 s, then rm). */
export const HOLD_MS = 60_000;
/** How long a break lock holds at most: it covers a read and an unlink. */
export const BREAK_STALE_MS = 10_000;
/** How often a waiting taker looks again. */
const POLL_MS = 20;

interface ClaimFile {
  by: ClaimHolder;
  pid: number;
  until: number;
  token: string;
}

/**
 * How long a handler waits for a claim: up to `atMostMs`, and never into the last second before its deadline,
 * so that its answer (VM_NOT_READY, naming the holder) arrives rather than a TIMEOUT that says nothing.
 */
export function claimWaitMs(deadline: number, atMostMs: number): number {
  return Math.max(0, Math.min(atMostMs, deadline - Date.now() - 1_000));
}

export type ClaimOutcome<T> = { ran: true; value: T } | { ran: false; heldBy: string };

export const claimPath = (stateDir: string, id: string): string => join(stateDir, '.claims', id);

/**
 * Runs `work` while holding the claim on `id`, waiting up to `waitMs` for it. When the claim stays held that
 * long, `work` does not run and the answer names the holder (`heldBy`), for the caller to say so: a handler
 * answers VM_NOT_READY, the sweeper skips the step. A `signal` aborts the wait (rejecting with its reason).
 */
export async function withVmClaim<T>(
  stateDir: string,
  id: string,
  by: ClaimHolder,
  wait: { waitMs: number; signal?: AbortSignal },
  work: () => Promise<T>,
): Promise<ClaimOutcome<T>> {
  const path = claimPath(stateDir, id);
  const deadline = Date.now() + wait.waitMs;
  await mkdir(join(stateDir, '.claims'), { recursive: true, mode: 0o750 });
  let mine: string;
  for (;;) {
    wait.signal?.throwIfAborted();
    const held = await tryTake(path, by);
    if (typeof held === 'string') {
      mine = held;
      break;
    }
    // Released between the exclusive create and the look: try again at once.
    if (held === undefined) continue;
    if ((await isStale(held)) && (await removeIfStill(path, held))) continue;
    if (Date.now() >= deadline) return { ran: false, heldBy: held.by };
    await sleep(POLL_MS);
  }
  try {
    return { ran: true, value: await work() };
  } finally {
    await release(path, mine);
  }
}

/** A file found at a claim's (or break lock's) path, as it was when looked at. */
interface Found {
  /** Inode, times and bytes: what tells the file judged from any made after it at the same path. */
  identity: string;
  /** Its bytes, when it is a file that could be read. */
  text: string | undefined;
  by: string;
  claim: Partial<ClaimFile> | undefined;
  /** When the file was last written: the only age a claim that cannot be read has. */
  mtimeMs: number;
  /** Something other than a regular file (a folder, a link): nothing this module made. */
  foreign: boolean;
}

/** Takes the claim (its content, as written), or says what holds it (undefined: nothing, by the time it was looked at). */
async function tryTake(path: string, by: ClaimHolder): Promise<string | Found | undefined> {
  let file: FileHandle | undefined;
  try {
    file = await open(path, 'wx', 0o640);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  if (!file) return look(path);
  try {
    // Its time runs from when it is taken, not from when the wait for it began.
    const mine = JSON.stringify({ by, pid: process.pid, until: Date.now() + HOLD_MS, token: randomUUID() } satisfies ClaimFile);
    await file.writeFile(mine);
    return mine;
  } catch (error) {
    // A claim that could not be written (a full disk) is not left to block the VM until it goes stale: it is
    // this taker's own file, which no one else removes while it is fresh.
    await unlink(path).catch(() => undefined);
    throw error;
  } finally {
    await file.close();
  }
}

/**
 * What is at `path` now. lstat, not the read, says whether anything is there: a dangling link reads as
 * ENOENT yet blocks every exclusive create; a folder or an unreadable file is there all the same.
 */
async function look(path: string): Promise<Found | undefined> {
  const info = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (info === undefined) return undefined;
  const text = info.isFile() ? await readFile(path, 'utf8').catch(() => undefined) : undefined;
  const claim = text === undefined ? undefined : parseClaim(text);
  return {
    identity: `${info.dev}:${info.ino}:${info.mtimeMs}:${info.ctimeMs}:${text ?? ''}`,
    text,
    by: typeof claim?.by === 'string' ? claim.by : UNKNOWN_HOLDER,
    claim,
    mtimeMs: info.mtimeMs,
    foreign: !info.isFile(),
  };
}

function parseClaim(text: string): Partial<ClaimFile> | undefined {
  try {
    const value = JSON.parse(text) as unknown;
    return typeof value === 'object' && value !== null ? (value as Partial<ClaimFile>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Past its time, or its process gone. A claim that cannot be read is one being written (exclusive create,
 * then the write) or torn by a holder cut off mid-write: it is stale once its file is older than `maxAgeMs`.
 */
async function isStale(found: Found): Promise<boolean> {
  const { claim } = found;
  if (claim === undefined || typeof claim.until !== 'number') return Date.now() - found.mtimeMs > HOLD_MS;
  if (claim.until <= Date.now()) return true;
  return processGone(claim.pid);
}

/** A pid that names no process. This process's own pid never does: its threads share it. */
async function processGone(pid: unknown): Promise<boolean> {
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  // /proc, as for the `creating` mark (the sweeper's state-dir.ts): the same answer under Node and Deno.
  return (await stat(`/proc/${pid}`).catch(() => undefined)) === undefined;
}

/**
 * Removes the claim at `path` if it is still the one judged stale (`judged`), under the break lock. Says
 * whether anything may have changed (removed, or already gone): true means look again at once.
 */
async function removeIfStill(path: string, judged: Found): Promise<boolean> {
  const done = await underBreakLock(path, 0, async () => {
    const now = await look(path);
    if (now === undefined) return true;
    if (now.identity !== judged.identity) return true;
    await removeClaimFile(path, now);
    return true;
  });
  return done === true;
}

/** Removes this holder's own claim, if it is still its own: one held past HOLD_MS may have been taken by another. */
async function release(path: string, mine: string): Promise<void> {
  // Waits for the break lock as long as a stale one could hold it; after that the claim stays, to go stale.
  await underBreakLock(path, BREAK_STALE_MS + 1_000, async () => {
    const now = await look(path);
    if (now !== undefined && now.text === mine) await removeClaimFile(path, now);
  });
}

async function removeClaimFile(path: string, found: Found): Promise<void> {
  try {
    await unlink(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    // A folder at a claim's path (EISDIR, EPERM): nothing this module made, and nothing it may remove.
    throw new Error(`the claim path ${path} holds ${found.foreign ? 'something other than a file' : 'a file'} that cannot be removed (${code}); remove it by hand`, { cause: error });
  }
}

/**
 * Runs `step` holding `<path>.break`, waiting for it up to `waitMs`; undefined when it stays held. A break
 * lock that is stale (its process gone, or older than BREAK_STALE_MS) is removed the same careful way, by
 * inode, times and bytes; two takers could both judge one stale and both remove "it" only within the same
 * instant after a holder was cut off between its two file operations.
 */
async function underBreakLock<T>(path: string, waitMs: number, step: () => Promise<T>): Promise<T | undefined> {
  const lockPath = `${path}.break`;
  const deadline = Date.now() + waitMs;
  const mine = JSON.stringify({ pid: process.pid, token: randomUUID() });
  for (;;) {
    let file: FileHandle | undefined;
    try {
      file = await open(lockPath, 'wx', 0o640);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (file) {
      try {
        await file.writeFile(mine);
      } catch (error) {
        await unlink(lockPath).catch(() => undefined); // its own, just made: no one else removes a fresh one
        throw error;
      } finally {
        await file.close();
      }
      try {
        return await step();
      } finally {
        // Only while still its own: a step stuck past BREAK_STALE_MS may have lost it to another.
        const now = await look(lockPath).catch(() => undefined);
        if (now?.text === mine) await unlink(lockPath).catch(() => undefined);
      }
    }
    const held = await look(lockPath);
    if (held === undefined) continue;
    const lockStale = Date.now() - held.mtimeMs > BREAK_STALE_MS || (await processGone(held.claim?.pid));
    if (lockStale) {
      const again = await look(lockPath);
      if (again?.identity === held.identity) await removeClaimFile(lockPath, again);
      continue;
    }
    if (Date.now() >= deadline) return undefined;
    await sleep(5);
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
