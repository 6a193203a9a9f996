/**
 * A short claim on one VM id, for the few steps that judge a VM folder without vm.json and then act on it:
 * create-vm taking over its derived id (the leftover check, its removal, the `creating` mark), delete-vm
 * removing a leftover, the sweeper removing an orphan's folder or tap. Each of them checks, then acts; without
 * the claim one could check between another's check and act — a delete or a sweep removing the folder a
 * create has just begun in, or a tombstone written for a VM whose create then goes on to answer "created".
 * Under the claim the check and the act are one step for everyone who takes it.
 *
 * The claim is a file, `<stateDir>/.claims/<vm id>`, created exclusively (O_EXCL): handlers run in worker
 * threads and the sweeper in the agent's main thread, so nothing in memory is shared by all of them. The
 * file names its holder and until when it holds. A holder cut off without releasing it (its thread stopped
 * after a cancel, its agent killed) leaves it; the next taker finds it stale — past its time, or its process
 * gone — and moves it aside. Nothing under a claim runs long (a SIGKILL awaited, a folder removed), so the
 * time it holds (HOLD_MS) is far more than any of them needs; only a step stuck past it (a hung disk) could
 * lose its claim while still at work.
 */
import { randomUUID } from 'node:crypto';
import { link, mkdir, open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';

/** Who holds a claim: named in the answer of whoever has to wait for it. */
export type ClaimHolder = 'create-vm' | 'delete-vm' | 'sweeper';

/** How long a claim holds at most. The steps under one take seconds at worst (SIGKILL awaited 5 s, then rm). */
export const HOLD_MS = 60_000;
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
  const mine = JSON.stringify({ by, pid: process.pid, until: Date.now() + HOLD_MS, token: randomUUID() } satisfies ClaimFile);
  const deadline = Date.now() + wait.waitMs;
  await mkdir(join(stateDir, '.claims'), { recursive: true, mode: 0o750 });
  for (;;) {
    wait.signal?.throwIfAborted();
    const held = await tryTake(path, mine);
    if (held === 'taken') break;
    if (held === 'released') continue;
    if (await isStale(held)) {
      await moveAside(path, held.text);
      continue;
    }
    if (Date.now() >= deadline) return { ran: false, heldBy: held.by };
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  try {
    return { ran: true, value: await work() };
  } finally {
    await release(path, mine);
  }
}

interface Held {
  text: string;
  by: string;
  claim: Partial<ClaimFile> | undefined;
  /** When the file was last written: the only age a claim that cannot be read has. */
  mtimeMs: number;
}

/** Takes the claim, or says who holds it (`released`: nobody by the time it was read; try again). */
async function tryTake(path: string, mine: string): Promise<'taken' | 'released' | Held> {
  let file: FileHandle | undefined;
  try {
    file = await open(path, 'wx', 0o640);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  if (file) {
    try {
      await file.writeFile(mine);
      return 'taken';
    } catch (error) {
      // A claim that could not be written (a full disk) is not left to block the VM until it goes stale.
      await rm(path, { force: true });
      throw error;
    } finally {
      await file.close();
    }
  }
  const [text, info] = await Promise.all([readFile(path, 'utf8').catch(() => undefined), stat(path).catch(() => undefined)]);
  if (text === undefined || info === undefined) return 'released';
  const claim = parseClaim(text);
  return { text, by: typeof claim?.by === 'string' ? claim.by : 'an unknown holder', claim, mtimeMs: info.mtimeMs };
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
 * then the write) or torn by a holder cut off mid-write: it is stale once its file is older than HOLD_MS.
 */
async function isStale(held: Held): Promise<boolean> {
  const { claim } = held;
  if (claim === undefined || typeof claim.until !== 'number') return Date.now() - held.mtimeMs > HOLD_MS;
  if (claim.until <= Date.now()) return true;
  const pid = claim.pid;
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  // /proc, as for the `creating` mark (the sweeper's state-dir.ts): the same answer under Node and Deno.
  return (await stat(`/proc/${pid}`).catch(() => undefined)) === undefined;
}

/**
 * Moves the claim file aside if it still holds `expected` (the stale claim judged), and puts back whatever
 * else it finds: between the read and the move, another taker may have moved the stale claim itself and
 * taken a fresh one, which is not ours to remove. `link` puts it back only where no claim is (EEXIST else).
 */
export async function moveAside(path: string, expected: string): Promise<void> {
  const aside = `${path}.${randomUUID()}.aside`;
  try {
    await rename(path, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  const moved = await readFile(aside, 'utf8').catch(() => undefined);
  if (moved !== expected) await link(aside, path).catch(() => undefined);
  await rm(aside, { force: true });
}

/** Removes the claim only while it is still this one: one held past HOLD_MS may have been taken by another. */
async function release(path: string, mine: string): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === mine) await moveAside(path, mine);
}
