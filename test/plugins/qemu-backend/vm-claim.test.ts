/**
 * The claim on a VM id (vm-claim.ts): one holder at a time, a wait that ends naming the holder, stale claims
 * moved aside, and a release that removes only its own claim. Files in a temp folder only.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { claimPath, claimWaitMs, HOLD_MS, moveAside, withVmClaim } from '../../../plugins/qemu-backend/vm-claim.ts';
import { tempDir } from '../../helpers.ts';

const ID = 'h1.abcdefgh';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function plant(stateDir: string, content: string, ageMs = 0): Promise<string> {
  const path = claimPath(stateDir, ID);
  await mkdir(join(stateDir, '.claims'), { recursive: true });
  await writeFile(path, content);
  if (ageMs > 0) {
    const then = new Date(Date.now() - ageMs);
    await utimes(path, then, then);
  }
  return path;
}

const claimOf = (fields: Record<string, unknown>) => JSON.stringify({ by: 'sweeper', pid: process.pid, until: Date.now() + 60_000, token: 'theirs', ...fields });

test('claim — takers of one id never overlap, each in its turn; another id is not held up; nothing is left behind', async (t) => {
  const stateDir = await tempDir(t);
  let inside = 0;
  let most = 0;
  const order: number[] = [];
  let other: unknown;
  const taker = (n: number) =>
    withVmClaim(stateDir, ID, 'create-vm', { waitMs: 10_000 }, async () => {
      inside += 1;
      most = Math.max(most, inside);
      // While this one holds its claim, one on another VM id goes through at once.
      if (order.length === 0) other = await withVmClaim(stateDir, 'h1.otherxxx', 'delete-vm', { waitMs: 0 }, async () => 'not held up');
      await sleep(30);
      order.push(n);
      inside -= 1;
      return n;
    });
  const outcomes = await Promise.all([1, 2, 3, 4, 5].map(taker));
  assert.deepEqual(other, { ran: true, value: 'not held up' });
  assert.equal(most, 1, 'two takers of one id were inside at once');
  assert.deepEqual(outcomes.map((o) => o.ran), [true, true, true, true, true]);
  assert.equal(order.length, 5);
  assert.deepEqual(await readdir(join(stateDir, '.claims')), [], 'every claim released, nothing moved aside left');
});

test('claim — one held longer than the wait: the work does not run, the answer names the holder, the claim stays theirs', async (t) => {
  const stateDir = await tempDir(t);
  const theirs = claimOf({ by: 'delete-vm' });
  const path = await plant(stateDir, theirs);
  let ran = false;
  const started = Date.now();
  const outcome = await withVmClaim(stateDir, ID, 'create-vm', { waitMs: 200 }, async () => (ran = true));
  assert.deepEqual(outcome, { ran: false, heldBy: 'delete-vm' });
  assert.equal(ran, false);
  assert.ok(Date.now() - started >= 200, 'it waited');
  assert.equal(await readFile(path, 'utf8'), theirs);
});

test('claim — a holder that releases while another waits: the waiter goes on then', async (t) => {
  const stateDir = await tempDir(t);
  const path = await plant(stateDir, claimOf({}));
  const steps: string[] = [];
  const waiting = withVmClaim(stateDir, ID, 'create-vm', { waitMs: 5_000 }, async () => steps.push('waiter ran'));
  await sleep(150);
  steps.push('released');
  await moveAside(path, await readFile(path, 'utf8'));
  assert.equal((await waiting).ran, true);
  assert.deepEqual(steps, ['released', 'waiter ran']);
});

test('claim — a stale claim is moved aside: past its time, its process gone, unreadable and older than HOLD_MS', async (t) => {
  const gone = spawnSync('true').pid; // a process that has exited
  assert.ok(gone && gone > 0);
  const stale = {
    'past its time': [claimOf({ until: Date.now() - 1 }), 0],
    'its process gone': [claimOf({ pid: gone }), 0],
    'torn, and old': ['{"by":"create', HOLD_MS + 5_000],
    'empty, and old': ['', HOLD_MS + 5_000],
  } as const;
  for (const [what, [content, age]] of Object.entries(stale)) {
    const stateDir = await tempDir(t);
    await plant(stateDir, content, age);
    const outcome = await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 0 }, async () => 'ran');
    assert.deepEqual(outcome, { ran: true, value: 'ran' }, what);
    assert.deepEqual(await readdir(join(stateDir, '.claims')), [], what);
  }
});

test('claim — fresh ones hold: one being written (unreadable, young), and one of this process that is within its time', async (t) => {
  for (const content of ['', '{"by":"crea', claimOf({ pid: process.pid })]) {
    const stateDir = await tempDir(t);
    const path = await plant(stateDir, content);
    const outcome = await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 60 }, async () => 'ran');
    assert.equal(outcome.ran, false, JSON.stringify(content));
    assert.equal(await readFile(path, 'utf8'), content);
  }
});

test('claim — moved aside only while it is still the one judged stale: a claim taken meanwhile is put back', async (t) => {
  const stateDir = await tempDir(t);
  const fresh = claimOf({ token: 'taken-meanwhile' });
  const path = await plant(stateDir, fresh);
  await moveAside(path, claimOf({ token: 'the-stale-one', until: 1 }));
  assert.equal(await readFile(path, 'utf8'), fresh);
  assert.deepEqual(await readdir(join(stateDir, '.claims')), ['h1.abcdefgh'], 'nothing moved aside is left');
  await moveAside(path, fresh);
  assert.deepEqual(await readdir(join(stateDir, '.claims')), []);
  await moveAside(path, fresh); // already gone: nothing to do
});

test('claim — the release leaves a claim that is not its own (taken after this one went stale)', async (t) => {
  const stateDir = await tempDir(t);
  const other = claimOf({ token: 'the-next-holder' });
  const outcome = await withVmClaim(stateDir, ID, 'delete-vm', { waitMs: 0 }, async () => {
    await writeFile(claimPath(stateDir, ID), other); // what a taker that moved this one aside would have written
  });
  assert.equal(outcome.ran, true);
  assert.equal(await readFile(claimPath(stateDir, ID), 'utf8'), other);
});

test('claim — an error in the work passes through and the claim is released; an abort ends a wait with its reason', async (t) => {
  const stateDir = await tempDir(t);
  await assert.rejects(
    withVmClaim(stateDir, ID, 'create-vm', { waitMs: 0 }, async () => {
      throw new Error('the work failed');
    }),
    /the work failed/,
  );
  assert.deepEqual(await readdir(join(stateDir, '.claims')), []);

  await plant(stateDir, claimOf({}));
  const controller = new AbortController();
  const waiting = withVmClaim(stateDir, ID, 'create-vm', { waitMs: 60_000, signal: controller.signal }, async () => 'ran');
  setTimeout(() => controller.abort(new Error('cancelled by its deadline')), 50);
  await assert.rejects(waiting, /cancelled by its deadline/);
});

test('claim — a handler waits at most the time given, and never into the last second before its deadline', () => {
  const now = Date.now();
  assert.equal(claimWaitMs(now + 60_000, 15_000), 15_000);
  const near = claimWaitMs(now + 3_000, 15_000);
  assert.ok(near > 1_900 && near <= 2_000, String(near));
  assert.equal(claimWaitMs(now + 500, 15_000), 0);
  assert.equal(claimWaitMs(now - 5_000, 15_000), 0);
});
