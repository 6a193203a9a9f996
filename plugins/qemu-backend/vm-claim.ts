/**
 * A short claim on one VM id, for the few steps that judge a VM folder without vm.json and then act on it:
 * create-vm taking over its derived id (the leftover check, its removal, the `creating` mark) and removing
 * what a failed start left, delete-vm removing a leftover, the sweeper removing an orphan's folder or tap.
 * Each of them checks, then acts; without the claim one could check between another's check and act — a
 * delete or a sweep removing the folder a create has just begun in, or a tombstone written for a VM whose
 * create then goes on to answer "created". Under the claim the check and the act are one step for everyone
 * who takes it.
 *
 * Handlers run in worker threads and the sweeper in the agent's main thread, so nothing in memory is shared
 * by all of them: a claim lives in `<stateDir>/.claims/`, as numbered entries `<vm id>.<n>`. Each entry is a
 * symbolic link whose target names its taker, `<by>:<pid>:<until>:<token>`: made in one step (no entry is
 * ever half-written) and needing no data block on a full disk. An entry is **stale** once its time is past
 * (HOLD_MS unless the taker asked for less) or its process is gone — a taker cut off without releasing (its
 * thread stopped after a cancel, its agent killed).
 *
 * Taking: look at the highest entry; while it is fresh, wait. When there is none, or it is stale, make an
 * entry numbered above it and by the clock (nextNumber; exclusively: of several takers that chose the same
 * number, one gets it) and look again: the claim is yours if no entry is above yours and every one below is
 * stale; else remove yours and wait. Two takers that both made an entry cannot both win: the one that looked
 * last sees the other's, still fresh. Stale entries are never removed to make room — only stepped over, and
 * cleared by the holder (and by pruneStaleClaims at agent start) — and numbers keep rising with the clock,
 * so a name once used is not made again; each removal also checks that the entry is still the one it
 * judged. So no removal hits a fresh entry. Removing a stale entry above a taker's own only lets that
 * taker hold now instead of after a retry: the stale one's taker is gone or past its time.
 *
 * What is left open: a step that runs past its claim's time (a hung disk) can find a second holder, as with
 * any lease; and the times are the wall clock's, so a clock stepped forward by that much makes fresh claims
 * stale, and one stepped back could make a used number again (harmful only if a remover is paused between
 * its look and its removal at that moment).
 */
import { randomUUID } from 'node:crypto';
import { lstat, mkdir, readdir, readlink, stat, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';

/** Who holds a claim: named in the answer of whoever has to wait for it. */
export type ClaimHolder = 'create-vm' | 'delete-vm' | 'sweeper';
const HOLDERS: ReadonlySet<string> = new Set<ClaimHolder>(['create-vm', 'delete-vm', 'sweeper']);

/** What a wait names when the entry is not one this module made (a file or folder put there by hand). */
export const UNKNOWN_HOLDER = 'an unknown holder';

/** How long a claim holds at most, by default. The steps under one take seconds at worst (SIGKILL awaited 5 s, then rm). */
export const HOLD_MS = 60_000;
/** How often a waiting taker looks again; each wait is this plus up to as much at random, so that takers who met once do not meet again. */
const POLL_MS = 20;

/**
 * How long a handler waits for a claim: up to `atMostMs`, and never into the last second before its deadline,
 * so that its answer (VM_NOT_READY, naming the holder) arrives rather than a TIMEOUT that says nothing.
 */
export function claimWaitMs(deadline: number, atMostMs: number): number {
  return Math.max(0, Math.min(atMostMs, deadline - Date.now() - 1_000));
}

export type ClaimOutcome<T> = { ran: true; value: T } | { ran: false; heldBy: string };

export const claimsDir = (stateDir: string): string => join(stateDir, '.claims');

/** The entry numbered `n` of the claim on `id`. */
export const claimEntryPath = (stateDir: string, id: string, n: number): string => join(claimsDir(stateDir), `${id}.${n}`);

/** What a claim's entry says: its link target. Exported for tests that stand in for another holder. */
export function claimTarget(by: string, pid: number, until: number, token = randomUUID().slice(0, 8)): string {
  return `${by}:${pid}:${until}:${token}`;
}

export interface ClaimWait {
  waitMs: number;
  signal?: AbortSignal;
  /** How long the claim holds if its holder is cut off without releasing it (default HOLD_MS). */
  holdMs?: number;
}

/**
 * Runs `work` while holding the claim on `id`, waiting up to `waitMs` for it. When the claim stays held that
 * long, `work` does not run and the answer names the holder (`heldBy`), for the caller to say so: a handler
 * answers VM_NOT_READY, the sweeper skips the step. A `signal` aborts the wait (rejecting with its reason).
 * The outcome is always the work's: a release that fails leaves the claim to go stale.
 */
export async function withVmClaim<T>(stateDir: string, id: string, by: ClaimHolder, wait: ClaimWait, work: () => Promise<T>): Promise<ClaimOutcome<T>> {
  const dir = claimsDir(stateDir);
  const deadline = Date.now() + wait.waitMs;
  await mkdir(dir, { recursive: true, mode: 0o750 });
  let mine: Entry;
  for (;;) {
    wait.signal?.throwIfAborted();
    const attempt = await tryTake(dir, id, by, wait.holdMs ?? HOLD_MS);
    if ('path' in attempt) {
      mine = attempt;
      break;
    }
    if (Date.now() >= deadline) return { ran: false, heldBy: attempt.heldBy };
    await sleep(POLL_MS + Math.random() * POLL_MS);
  }
  try {
    return { ran: true, value: await work() };
  } finally {
    await release(mine);
  }
}

/** One entry of a claim, as found. */
interface Entry {
  n: number;
  path: string;
  /** The link's target; undefined for anything that is not a link. */
  target: string | undefined;
  by: string;
  stale: boolean;
  /** Its inode when found: what tells a thing put there by hand from another in its place. */
  ino: number | undefined;
  /** The taker's pid, for an entry this module made. */
  pid?: number;
  /** When it was made (its mtime). */
  madeAt: number;
}

/** Takes the claim (its entry), or says who holds it. */
async function tryTake(dir: string, id: string, by: ClaimHolder, holdMs: number): Promise<Entry | { heldBy: string }> {
  const top = (await entriesOf(dir, id)).at(-1);
  if (top && !top.stale) return { heldBy: top.by };
  const n = nextNumber(top);
  const path = join(dir, `${id}.${n}`);
  const target = claimTarget(by, process.pid, Date.now() + holdMs);
  try {
    await symlink(target, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    // Another taker made this number first: it holds, or will find out that it does not.
    return { heldBy: (await entryAt(path, n))?.by ?? UNKNOWN_HOLDER };
  }
  const mine: Entry = { n, path, target, by, stale: false, ino: undefined, madeAt: Date.now() };
  let entries: Entry[];
  try {
    entries = await entriesOf(dir, id);
  } catch (error) {
    await removeIfSame(mine); // not left to block the id until its time
    throw error;
  }
  const rival = entries.find((entry) => entry.n > n || (entry.n < n && !entry.stale));
  if (rival) {
    await removeIfSame(mine);
    return { heldBy: rival.by };
  }
  // Stale entries below block no one, but would pile up; the holder is the only one who removes them.
  await Promise.all(entries.filter((entry) => entry.n < n).map(removeIfSame));
  return mine;
}

/**
 * Above the highest entry seen, and never below the clock (milliseconds × 1,000, plus 0–999 at random): the
 * numbers keep rising even when every entry has been removed, so a number once used is not made again, and
 * a taker that removes an entry it judged a moment ago cannot hit a newer one at the same name.
 */
function nextNumber(top: Entry | undefined): number {
  const n = Math.max((top?.n ?? 0) + 1, Date.now() * 1_000 + Math.floor(Math.random() * 1_000));
  if (!Number.isSafeInteger(n)) throw new Error(`a claim entry's number is too high to go above: remove ${top?.path}`);
  return n;
}

/**
 * Removes the stale entries of every claim: those left by takers that were killed, of VM ids nobody claims
 * again (the next holder would clear them). Run at agent start, with the agent run's start time: an entry
 * naming this process's pid made before then is an earlier run's (an agent that is PID 1 in its container
 * has the same pid each time), stale though its time may not be past. Safe beside takers all the same, as
 * each removal checks the entry is still the one judged stale. Returns how many it removed.
 */
export async function pruneStaleClaims(stateDir: string, runStartedAt: number, seams: { beforeRemove?: (path: string) => Promise<void> } = {}): Promise<number> {
  const dir = claimsDir(stateDir);
  const names = await readdir(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [] as string[];
    throw error;
  });
  let removed = 0;
  for (const name of names) {
    const dot = name.lastIndexOf('.'); // ids hold dots too: the number is after the last
    const n = dot > 0 ? entryNumber(name, name.slice(0, dot + 1)) : undefined;
    if (n === undefined) continue;
    const entry = await entryAt(join(dir, name), n);
    if (entry === undefined) continue;
    const earlierRun = entry.pid === process.pid && entry.madeAt < runStartedAt;
    if (!entry.stale && !earlierRun) continue;
    // (Tests only: something may happen at the entry's name between its judgement and its removal.)
    await seams.beforeRemove?.(entry.path);
    if (await removeIfSame(entry)) removed++;
  }
  return removed;
}

/**
 * Removes an entry if it is still the one found: a link with the same target (each claim's target has its
 * own token). Anything else is judged by its age again: an inode number is no proof of identity, as a file
 * made at the name just after the old one went often gets the freed number back (seen on ext4), and a
 * link put there in its place may get it too.
 */
async function removeIfSame(entry: Entry): Promise<boolean> {
  const info = await lstat(entry.path).catch(() => undefined);
  if (info === undefined) return false;
  if (entry.target !== undefined) {
    if ((await readlink(entry.path).catch(() => undefined)) !== entry.target) return false;
  } else if (info.isSymbolicLink() || info.ino !== entry.ino || Math.abs(Date.now() - info.mtimeMs) <= HOLD_MS) return false;
  return unlink(entry.path).then(
    () => true,
    () => false,
  );
}

/** The number of an entry named `<prefix><n>` (prefix `<vm id>.`), if it is one: up to 16 digits, a safe integer. */
function entryNumber(name: string, prefix: string): number | undefined {
  if (!name.startsWith(prefix) || !/^[1-9][0-9]{0,15}$/.test(name.slice(prefix.length))) return undefined;
  const n = Number(name.slice(prefix.length));
  return Number.isSafeInteger(n) ? n : undefined;
}

/** The claim's entries, lowest number first. */
async function entriesOf(dir: string, id: string): Promise<Entry[]> {
  const numbers = (await readdir(dir))
    .map((name) => entryNumber(name, `${id}.`))
    .filter((n): n is number => n !== undefined)
    .sort((a, b) => a - b);
  const entries = await Promise.all(numbers.map((n) => entryAt(join(dir, `${id}.${n}`), n)));
  return entries.filter((entry): entry is Entry => entry !== undefined);
}

async function entryAt(path: string, n: number): Promise<Entry | undefined> {
  const info = await lstat(path).catch(() => undefined);
  if (info === undefined) return undefined; // released meanwhile
  const target = info.isSymbolicLink() ? await readlink(path).catch(() => undefined) : undefined;
  const [by, pidText, untilText] = target?.split(':') ?? [];
  const pid = Number(pidText);
  const until = Number(untilText);
  if (by === undefined || !HOLDERS.has(by) || !Number.isSafeInteger(pid) || pid <= 0 || !Number.isFinite(until)) {
    // Not one this module made: it holds by its age alone, as anything in the way would (a time in the
    // future counts as old: it says nothing of when the thing was made).
    return { n, path, target, by: UNKNOWN_HOLDER, stale: Math.abs(Date.now() - info.mtimeMs) > HOLD_MS, ino: info.ino, madeAt: info.mtimeMs };
  }
  return { n, path, target, by, stale: until <= Date.now() || (await processGone(pid)), ino: info.ino, pid, madeAt: info.mtimeMs };
}

/** A pid that names no process. This process's own pid never does: its threads share it. */
async function processGone(pid: number): Promise<boolean> {
  if (pid === process.pid) return false;
  // /proc, as for the `creating` mark (the sweeper's state-dir.ts): the same answer under Node and Deno.
  return (await stat(`/proc/${pid}`).catch(() => undefined)) === undefined;
}

/**
 * Removes this holder's entry while it is still its own (one held past its time may have been cleared by
 * the next holder, and the number made again by another). An entry that cannot be read is removed all the
 * same: it is this holder's number. Errors are swallowed: the work's outcome is the answer, and an entry
 * left behind goes stale at its time.
 */
async function release(mine: Entry): Promise<void> {
  const target = await readlink(mine.path).catch((error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? null : undefined));
  if (target === null || (target !== undefined && target !== mine.target)) return;
  await unlink(mine.path).catch(() => undefined);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
