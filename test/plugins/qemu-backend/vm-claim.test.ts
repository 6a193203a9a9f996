/**
 * The claim on a VM id (vm-claim.ts): one holder at a time, a wait that ends naming the holder, stale claims
 * removed (by one taker, never a fresh one in their place), and a release that removes only its own claim.
 * Files in a temp folder only.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lutimes, mkdir, readdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { BREAK_STALE_MS, claimPath, claimWaitMs, HOLD_MS, UNKNOWN_HOLDER, withVmClaim } from '../../../plugins/qemu-backend/vm-claim.ts';
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
  assert.deepEqual(await readdir(join(stateDir, '.claims')), [], 'every claim released, no break lock left');
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
  await rm(path);
  assert.equal((await waiting).ran, true);
  assert.deepEqual(steps, ['released', 'waiter ran']);
});

test('claim — a stale claim is removed: past its time, its process gone, unreadable and older than HOLD_MS', async (t) => {
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
  assert.ok(near > 1_500 && near <= 2_000, String(near));
  assert.equal(claimWaitMs(now + 500, 15_000), 0);
  assert.equal(claimWaitMs(now - 5_000, 15_000), 0);
});

test('claim — takers that find one stale claim together: one removes it, they still go one at a time, and nothing is left', async (t) => {
  // Before, a stale claim was moved aside by rename: a third taker could take the emptied path in the gap,
  // and the put-back failed without a word, so two ran at once; or a released claim was put back, to block
  // the id until it went stale.
  const stateDir = await tempDir(t);
  let inside = 0;
  let most = 0;
  let runs = 0;
  const work = async () => {
    inside += 1;
    most = Math.max(most, inside);
    await sleep(Math.random() < 0.5 ? 0 : 1);
    runs += 1;
    inside -= 1;
  };
  for (let round = 0; round < 60; round += 1) {
    await plant(stateDir, claimOf({ until: Date.now() - 1, token: `stale-${round}` }));
    const takers = ['create-vm', 'delete-vm', 'sweeper', 'create-vm'] as const;
    const outcomes = await Promise.all(takers.map((by) => withVmClaim(stateDir, ID, by, { waitMs: 10_000 }, work)));
    assert.ok(outcomes.every((o) => o.ran), `round ${round}: every taker ran`);
    assert.equal(most, 1, `round ${round}: two takers of one id were inside at once`);
    assert.deepEqual(await readdir(join(stateDir, '.claims')), [], `round ${round}: a claim or break lock was left`);
  }
  assert.equal(runs, 60 * 4);
});

test('claim — its time runs from when it is taken, not from when the wait for it began', async (t) => {
  const stateDir = await tempDir(t);
  const path = await plant(stateDir, claimOf({}));
  setTimeout(() => void rm(path), 600);
  const outcome = await withVmClaim(stateDir, ID, 'create-vm', { waitMs: 5_000 }, async () => {
    const until = (JSON.parse(await readFile(path, 'utf8')) as { until: number }).until;
    return until - Date.now();
  });
  assert.equal(outcome.ran, true);
  assert.ok(outcome.ran && outcome.value > HOLD_MS - 300, `it holds ${outcome.ran ? outcome.value : '?'} ms more; it should hold about ${HOLD_MS}`);
});

test('claim — something that cannot be read at its path (a folder, a dangling link) is waited for like a holder, not spun on', { timeout: 10_000 }, async (t) => {
  for (const make of ['folder', 'dangling link'] as const) {
    const stateDir = await tempDir(t);
    const path = claimPath(stateDir, ID);
    await mkdir(join(stateDir, '.claims'), { recursive: true });
    if (make === 'folder') await mkdir(path);
    else await symlink(join(stateDir, 'nowhere'), path);
    const started = Date.now();
    const outcome = await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 200 }, async () => 'ran');
    assert.deepEqual(outcome, { ran: false, heldBy: UNKNOWN_HOLDER }, make);
    assert.ok(Date.now() - started >= 200 && Date.now() - started < 5_000, `${make}: waited ${Date.now() - started} ms`);
  }
});

test('claim — an old dangling link at its path is removed like a stale claim; an old folder is an error naming the path', async (t) => {
  const old = new Date(Date.now() - HOLD_MS - 5_000);
  const linked = await tempDir(t);
  await mkdir(join(linked, '.claims'));
  await symlink(join(linked, 'nowhere'), claimPath(linked, ID));
  await lutimes(claimPath(linked, ID), old, old);
  assert.deepEqual(await withVmClaim(linked, ID, 'sweeper', { waitMs: 0 }, async () => 'ran'), { ran: true, value: 'ran' });
  assert.deepEqual(await readdir(join(linked, '.claims')), []);

  const folder = await tempDir(t);
  await mkdir(claimPath(folder, ID), { recursive: true });
  await utimes(claimPath(folder, ID), old, old);
  await assert.rejects(withVmClaim(folder, ID, 'sweeper', { waitMs: 0 }, async () => 'ran'), (error: Error) => {
    assert.ok(error.message.startsWith(`the claim path ${claimPath(folder, ID)} holds something other than a file that cannot be removed (`), error.message);
    assert.match(error.message, /; remove it by hand$/);
    return true;
  });
  assert.deepEqual(await readdir(join(folder, '.claims')), [ID], 'the folder is left, and no break lock');
});

test('claim — a stale claim is removed only under the break lock: while another holds it, the taker waits; a stale break lock is removed', async (t) => {
  const stateDir = await tempDir(t);
  await plant(stateDir, claimOf({ until: Date.now() - 1 }));
  const lock = `${claimPath(stateDir, ID)}.break`;
  await writeFile(lock, JSON.stringify({ pid: process.pid, token: 'another-breaker' }));
  assert.equal((await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 150 }, async () => 'ran')).ran, false, 'the stale claim stays while another breaker is at it');
  const waiting = withVmClaim(stateDir, ID, 'sweeper', { waitMs: 5_000 }, async () => 'ran');
  setTimeout(() => void rm(lock), 200);
  assert.deepEqual(await waiting, { ran: true, value: 'ran' });
  assert.deepEqual(await readdir(join(stateDir, '.claims')), []);

  // A break lock whose holder is gone, or older than BREAK_STALE_MS, does not block anyone.
  const gone = spawnSync('true').pid;
  for (const [what, content, ageMs] of [['its process gone', JSON.stringify({ pid: gone, token: 'x' }), 0], ['old', '', BREAK_STALE_MS + 2_000]] as const) {
    await plant(stateDir, claimOf({ until: Date.now() - 1 }));
    await writeFile(lock, content);
    if (ageMs > 0) await utimes(lock, new Date(Date.now() - ageMs), new Date(Date.now() - ageMs));
    assert.deepEqual(await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 500 }, async () => 'ran'), { ran: true, value: 'ran' }, what);
    assert.deepEqual(await readdir(join(stateDir, '.claims')), [], what);
  }
});

test('claim — the release waits for a break lock held at that moment, then removes its claim', async (t) => {
  const stateDir = await tempDir(t);
  const lock = `${claimPath(stateDir, ID)}.break`;
  const outcome = await withVmClaim(stateDir, ID, 'delete-vm', { waitMs: 0 }, async () => {
    await writeFile(lock, JSON.stringify({ pid: process.pid, token: 'a-breaker-at-work' }));
    setTimeout(() => void rm(lock), 300);
  });
  assert.equal(outcome.ran, true);
  assert.deepEqual(await readdir(join(stateDir, '.claims')), []);
});

test('claim — a folder at the break lock\'s path is waited for while young, and then an error naming the path, never spun on', { timeout: 10_000 }, async (t) => {
  const stateDir = await tempDir(t);
  await plant(stateDir, claimOf({ until: Date.now() - 1 }));
  const lock = `${claimPath(stateDir, ID)}.break`;
  await mkdir(lock);
  assert.deepEqual(await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 100 }, async () => 'ran'), { ran: false, heldBy: 'sweeper' });
  const old = new Date(Date.now() - BREAK_STALE_MS - 2_000);
  await utimes(lock, old, old);
  await assert.rejects(withVmClaim(stateDir, ID, 'sweeper', { waitMs: 100 }, async () => 'ran'), (error: Error) => {
    assert.ok(error.message.startsWith(`the claim path ${lock} holds something other than a file that cannot be removed (`), error.message);
    return true;
  });
});
