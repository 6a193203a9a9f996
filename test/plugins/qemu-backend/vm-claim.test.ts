/**
 * The claim on a VM id (vm-claim.ts): one holder at a time, a wait that ends naming the holder, stale entries
 * stepped over (never removed to make room), and a release that removes only its own entry. Files in a temp
 * folder only; the last test runs takers in several processes.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { lutimes, mkdir, open, readdir, readlink, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { claimEntryPath, claimsDir, claimTarget, claimWaitMs, HOLD_MS, pruneStaleClaims, UNKNOWN_HOLDER, withVmClaim } from '../../../plugins/qemu-backend/vm-claim.ts';
import { tempDir } from '../../helpers.ts';
import { holdClaim } from './claim-helpers.ts';

const ID = 'h1.abcdefgh';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const gonePid = () => spawnSync('true').pid!; // a process that has exited
const old = () => new Date(Date.now() - HOLD_MS - 5_000);

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
  assert.deepEqual(await readdir(claimsDir(stateDir)), [], 'every claim released');
});

test('claim — one held longer than the wait: the work does not run, the answer names the holder, the claim stays theirs', async (t) => {
  const stateDir = await tempDir(t);
  const theirs = await holdClaim(stateDir, ID, 'delete-vm');
  const target = await readlink(theirs);
  let ran = false;
  const started = Date.now();
  const outcome = await withVmClaim(stateDir, ID, 'create-vm', { waitMs: 200 }, async () => (ran = true));
  assert.deepEqual(outcome, { ran: false, heldBy: 'delete-vm' });
  assert.equal(ran, false);
  assert.ok(Date.now() - started >= 200, 'it waited');
  assert.deepEqual(await readdir(claimsDir(stateDir)), [`${ID}.1`], 'the waiter left no entry of its own');
  assert.equal(await readlink(theirs), target);
});

test('claim — a holder that releases while another waits: the waiter goes on then', async (t) => {
  const stateDir = await tempDir(t);
  const theirs = await holdClaim(stateDir, ID, 'sweeper');
  const steps: string[] = [];
  const waiting = withVmClaim(stateDir, ID, 'create-vm', { waitMs: 5_000 }, async () => steps.push('waiter ran'));
  await sleep(150);
  steps.push('released');
  await rm(theirs);
  assert.equal((await waiting).ran, true);
  assert.deepEqual(steps, ['released', 'waiter ran']);
});

test('claim — a stale entry is stepped over and then cleared: past its time, its process gone, something not ours and old', async (t) => {
  const stale: Record<string, (stateDir: string) => Promise<unknown>> = {
    'past its time': (dir) => holdClaim(dir, ID, 'sweeper', { until: Date.now() - 1 }),
    'its process gone': (dir) => holdClaim(dir, ID, 'sweeper', { pid: gonePid() }),
    'a file, old': async (dir) => {
      await writeFile(claimEntryPath(dir, ID, 1), '{"by":"create');
      await utimes(claimEntryPath(dir, ID, 1), old(), old());
    },
    'a link that is not a claim, old': async (dir) => {
      await symlink('nowhere', claimEntryPath(dir, ID, 1));
      await lutimes(claimEntryPath(dir, ID, 1), old(), old());
    },
  };
  for (const [what, plant] of Object.entries(stale)) {
    const stateDir = await tempDir(t);
    await mkdir(claimsDir(stateDir));
    await plant(stateDir);
    let during: string[] = [];
    const outcome = await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 0 }, async () => {
      during = await readdir(claimsDir(stateDir));
      return 'ran';
    });
    assert.deepEqual(outcome, { ran: true, value: 'ran' }, what);
    assert.equal(during.length, 1, `${what}: the stale entry was stepped over, then cleared by the holder: ${during}`);
    assert.notEqual(during[0], `${ID}.1`, what);
    assert.deepEqual(await readdir(claimsDir(stateDir)), [], what);
  }
});

test('claim — fresh ones hold: something not ours but young, and one of this process within its time', async (t) => {
  const plants: Record<string, (stateDir: string) => Promise<unknown>> = {
    'a file, young': (dir) => writeFile(claimEntryPath(dir, ID, 1), ''),
    'a folder, young': (dir) => mkdir(claimEntryPath(dir, ID, 1)),
    'a link that is not a claim, young': (dir) => symlink('create-vm:x:y:z', claimEntryPath(dir, ID, 1)),
    'this process, within its time': (dir) => holdClaim(dir, ID, 'create-vm'),
  };
  for (const [what, plant] of Object.entries(plants)) {
    const stateDir = await tempDir(t);
    await mkdir(claimsDir(stateDir));
    await plant(stateDir);
    const outcome = await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 60 }, async () => 'ran');
    assert.deepEqual(outcome, { ran: false, heldBy: what.startsWith('this') ? 'create-vm' : UNKNOWN_HOLDER }, what);
    assert.deepEqual(await readdir(claimsDir(stateDir)), [`${ID}.1`], what);
  }
});

test('claim — pruneStaleClaims (at agent start) removes the stale entries of every id, nothing fresh, nothing that is no entry', async (t) => {
  // Before, an entry left by a killed taker stayed until its VM id was claimed again: for an id nobody
  // claims again, for ever.
  const stateDir = await tempDir(t);
  const runStartedAt = Date.now() - 30_000;
  assert.equal(await pruneStaleClaims(stateDir, runStartedAt), 0, 'no .claims folder yet: nothing to do');
  await holdClaim(stateDir, 'h1.aaaaaaaa', 'sweeper', { until: Date.now() - 1 });
  await holdClaim(stateDir, 'h1.bbbbbbbb', 'create-vm', { pid: gonePid(), n: 7 });
  await writeFile(claimEntryPath(stateDir, 'h1.cccccccc', 2), 'by hand');
  await utimes(claimEntryPath(stateDir, 'h1.cccccccc', 2), old(), old());
  await mkdir(claimEntryPath(stateDir, 'h1.dddddddd', 3));
  await utimes(claimEntryPath(stateDir, 'h1.dddddddd', 3), old(), old());
  await holdClaim(stateDir, 'h1.eeeeeeee', 'delete-vm', { n: 4 });
  await writeFile(claimEntryPath(stateDir, 'h1.ffffffff', 5), 'by hand, just now');
  await writeFile(join(claimsDir(stateDir), 'notes.txt'), 'not an entry');
  // An earlier agent run with this process's pid (PID 1 in a container, each time): its time not past yet.
  const earlierRun = await holdClaim(stateDir, 'h1.gggggggg', 'delete-vm', { n: 6 });
  await lutimes(earlierRun, new Date(runStartedAt - 5_000), new Date(runStartedAt - 5_000));
  assert.equal(await pruneStaleClaims(stateDir, runStartedAt), 4, 'past its time, its process gone, an old file, an earlier run');
  // The old folder is stale too but cannot be unlinked (stepped over all the same, as before).
  assert.deepEqual((await readdir(claimsDir(stateDir))).sort(), ['h1.dddddddd.3', 'h1.eeeeeeee.4', 'h1.ffffffff.5', 'notes.txt']);
});

test('claim — pruneStaleClaims leaves an entry put at a stale one\'s name between its look and its removal', async (t) => {
  // A plain unlink here would remove a taker's fresh claim: it would then hold nothing, and a second taker
  // could get in beside it.
  const stateDir = await tempDir(t);
  const stale = await holdClaim(stateDir, ID, 'sweeper', { until: Date.now() - 1, n: 3 });
  await writeFile(claimEntryPath(stateDir, 'h1.zzzzzzzz', 4), 'by hand');
  await utimes(claimEntryPath(stateDir, 'h1.zzzzzzzz', 4), old(), old());
  const byHandThenClaimed = claimEntryPath(stateDir, 'h1.yyyyyyyy', 5);
  await writeFile(byHandThenClaimed, 'by hand');
  await utimes(byHandThenClaimed, old(), old());
  const fresh = claimTarget('create-vm', process.pid, Date.now() + 60_000, 'newtaker');
  const replaced: string[] = [];
  const removed = await pruneStaleClaims(stateDir, Date.now() - 30_000, {
    beforeRemove: async (path) => {
      replaced.push(path);
      await unlink(path);
      // The same name again: a link with another target; for the one made by hand, a new file (which on
      // ext4 often gets the freed inode number back: the number alone cannot tell them apart).
      if (path === stale || path === byHandThenClaimed) await symlink(fresh, path);
      else await writeFile(path, 'by hand, again');
    },
  });
  assert.equal(replaced.length, 3, 'all three were judged stale');
  assert.equal(removed, 0);
  assert.equal(await readlink(stale), fresh, 'the new claim is left');
  assert.equal(await readlink(byHandThenClaimed), fresh, 'a claim put in place of a file made by hand is left');
  assert.deepEqual((await readdir(claimsDir(stateDir))).sort(), [`${ID}.3`, 'h1.yyyyyyyy.5', 'h1.zzzzzzzz.4']);
});

test('claim — an old folder in the way is stepped over and left (it cannot be unlinked): it blocks no one', async (t) => {
  const stateDir = await tempDir(t);
  await mkdir(claimEntryPath(stateDir, ID, 1), { recursive: true });
  await utimes(claimEntryPath(stateDir, ID, 1), old(), old());
  for (let i = 0; i < 3; i += 1) assert.deepEqual(await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 0 }, async () => 'ran'), { ran: true, value: 'ran' });
  assert.deepEqual(await readdir(claimsDir(stateDir)), [`${ID}.1`]);
});

test('claim — the release leaves an entry that is not its own (something else put at its name after this one went stale)', async (t) => {
  const stateDir = await tempDir(t);
  const other = claimTarget('sweeper', process.pid, Date.now() + 60_000, 'nexthold');
  let name = '';
  const outcome = await withVmClaim(stateDir, ID, 'delete-vm', { waitMs: 0 }, async () => {
    [name] = await readdir(claimsDir(stateDir)) as [string];
    await unlink(join(claimsDir(stateDir), name));
    await symlink(other, join(claimsDir(stateDir), name));
  });
  assert.equal(outcome.ran, true);
  assert.equal(await readlink(join(claimsDir(stateDir), name)), other);
});

test('claim — numbers keep rising with the clock, even when every entry is gone: a number once used is not made again', async (t) => {
  const stateDir = await tempDir(t);
  const seen: number[] = [];
  const note = async () => {
    const [name] = await readdir(claimsDir(stateDir));
    seen.push(Number(name!.slice(ID.length + 1)));
  };
  for (let i = 0; i < 5; i += 1) {
    await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 0 }, note);
    await sleep(2);
  }
  assert.deepEqual([...seen].sort((a, b) => a - b), seen, `rising: ${seen}`);
  assert.equal(new Set(seen).size, 5);
  assert.ok(seen[0]! >= (Date.now() - 60_000) * 1_000, `by the clock: ${seen[0]}`);
});

test('claim — a stale entry at the highest number: the next is still one it lists (16 digits); beyond the safe range, an error naming it', async (t) => {
  // A reviewer's case: a stale entry at 999999999999999 made the next taker create a 16-digit name the
  // listing did not accept; a second taker then found nothing and held too.
  const stateDir = await tempDir(t);
  await holdClaim(stateDir, ID, 'sweeper', { n: 999_999_999_999_999, until: 1 });
  let inside = 0;
  let most = 0;
  const work = async () => {
    most = Math.max(most, (inside += 1));
    await sleep(100);
    inside -= 1;
  };
  const a = withVmClaim(stateDir, ID, 'create-vm', { waitMs: 5_000 }, work);
  await sleep(30);
  const b = withVmClaim(stateDir, ID, 'delete-vm', { waitMs: 5_000 }, work);
  assert.deepEqual([(await a).ran, (await b).ran], [true, true]);
  assert.equal(most, 1);

  const top = await holdClaim(stateDir, ID, 'sweeper', { n: Number.MAX_SAFE_INTEGER, until: 1 });
  await assert.rejects(withVmClaim(stateDir, ID, 'sweeper', { waitMs: 0 }, async () => 'ran'), (error: Error) => {
    assert.equal(error.message, `a claim entry's number is too high to go above: remove ${top}`);
    return true;
  });
});

test('claim — something in the way with a time in the future is not young: it is stepped over after a minute all the same', async (t) => {
  const stateDir = await tempDir(t);
  await mkdir(claimsDir(stateDir));
  await writeFile(claimEntryPath(stateDir, ID, 1), 'by hand');
  const future = new Date(Date.now() + 10 * HOLD_MS);
  await utimes(claimEntryPath(stateDir, ID, 1), future, future);
  assert.deepEqual(await withVmClaim(stateDir, ID, 'sweeper', { waitMs: 0 }, async () => 'ran'), { ran: true, value: 'ran' });
});

test('claim — an error in the work passes through and the claim is released; an abort ends a wait with its reason', async (t) => {
  const stateDir = await tempDir(t);
  await assert.rejects(
    withVmClaim(stateDir, ID, 'create-vm', { waitMs: 0 }, async () => {
      throw new Error('the work failed');
    }),
    /the work failed/,
  );
  assert.deepEqual(await readdir(claimsDir(stateDir)), []);

  await holdClaim(stateDir, ID, 'sweeper');
  const controller = new AbortController();
  const waiting = withVmClaim(stateDir, ID, 'create-vm', { waitMs: 60_000, signal: controller.signal }, async () => 'ran');
  setTimeout(() => controller.abort(new Error('cancelled by its deadline')), 50);
  await assert.rejects(waiting, /cancelled by its deadline/);
});

test('claim — the outcome is the work\'s even when the release fails; the entry left goes stale at its time', async (t) => {
  const stateDir = await tempDir(t);
  const outcome = await withVmClaim(stateDir, ID, 'create-vm', { waitMs: 0, holdMs: 300 }, async () => {
    // The entry cannot be removed: a folder now sits in the claims folder's place (what a full or broken
    // disk would make of the unlink is the same to the caller).
    await rm(claimsDir(stateDir), { recursive: true });
    await mkdir(claimEntryPath(stateDir, ID, 1), { recursive: true });
    return 'done';
  });
  assert.deepEqual(outcome, { ran: true, value: 'done' });
});

test('claim — its time runs from when it is taken, and is as long as asked (holdMs)', async (t) => {
  const stateDir = await tempDir(t);
  const theirs = await holdClaim(stateDir, ID, 'sweeper');
  setTimeout(() => void rm(theirs), 600);
  const timeLeft = async () => {
    const [entry] = await readdir(claimsDir(stateDir));
    return Number((await readlink(join(claimsDir(stateDir), entry!))).split(':')[2]) - Date.now();
  };
  const outcome = await withVmClaim(stateDir, ID, 'create-vm', { waitMs: 5_000 }, timeLeft);
  assert.ok(outcome.ran && outcome.value > HOLD_MS - 300, `it holds ${outcome.ran ? outcome.value : '?'} ms more; it should hold about ${HOLD_MS}`);
  const short = await withVmClaim(stateDir, ID, 'create-vm', { waitMs: 0, holdMs: 5_000 }, timeLeft);
  assert.ok(short.ran && short.value > 4_500 && short.value <= 5_000, `holdMs 5000: it holds ${short.ran ? short.value : '?'} ms more`);
});

test('claim — a taker cut off with its claim held (its entry left, its time to run): the next one waits, then steps over it', async (t) => {
  const stateDir = await tempDir(t);
  await holdClaim(stateDir, ID, 'create-vm', { until: Date.now() + 400 });
  const started = Date.now();
  const outcome = await withVmClaim(stateDir, ID, 'delete-vm', { waitMs: 5_000 }, async () => 'ran');
  assert.deepEqual(outcome, { ran: true, value: 'ran' });
  assert.ok(Date.now() - started >= 380, 'it waited for the entry to go stale');
  assert.deepEqual(await readdir(claimsDir(stateDir)), []);
});

test('claim — a handler waits at most the time given, and never into the last second before its deadline', () => {
  const now = Date.now();
  assert.equal(claimWaitMs(now + 60_000, 15_000), 15_000);
  const near = claimWaitMs(now + 3_000, 15_000);
  assert.ok(near > 1_500 && near <= 2_000, String(near));
  assert.equal(claimWaitMs(now + 500, 15_000), 0);
  assert.equal(claimWaitMs(now - 5_000, 15_000), 0);
});

test('claim — takers that find one stale claim together: they still go one at a time, and nothing is left', async (t) => {
  // Before, a stale claim was moved aside by rename (95828fb), then removed under a break lock (3da77db):
  // the first let a third taker into the emptied path; the second, two takers that removed a stale break
  // lock together. Stale entries are now stepped over, never removed to make room.
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
    await holdClaim(stateDir, ID, 'sweeper', { until: Date.now() - 1, token: `stale-${round}` });
    const takers = ['create-vm', 'delete-vm', 'sweeper', 'create-vm'] as const;
    const outcomes = await Promise.all(takers.map((by) => withVmClaim(stateDir, ID, by, { waitMs: 10_000 }, work)));
    assert.ok(outcomes.every((o) => o.ran), `round ${round}: every taker ran`);
    assert.equal(most, 1, `round ${round}: two takers of one id were inside at once`);
    assert.deepEqual(await readdir(claimsDir(stateDir)), [], `round ${round}: an entry was left`);
  }
  assert.equal(runs, 60 * 4);
});

test('claim — takers in four processes, with entries of dead takers in the way: never two inside at once', async (t) => {
  const stateDir = await tempDir(t);
  await mkdir(claimsDir(stateDir));
  const inside = join(stateDir, 'inside');
  const script = join(stateDir, 'taker.mts');
  // Each process: rounds of three takers at once; the work holds an exclusively created file, so a second
  // taker inside at the same time, in any process, fails to make it and counts an overlap. Now and then a
  // dead taker's entry is planted at the next number, as a taker SIGKILLed right after taking would leave.
  await writeFile(
    script,
    `import { open, readdir, symlink, unlink } from 'node:fs/promises';
import { withVmClaim, claimEntryPath, claimTarget } from ${JSON.stringify(new URL('../../../plugins/qemu-backend/vm-claim.ts', import.meta.url).pathname)};
const [stateDir, inside, dead] = process.argv.slice(2);
let overlaps = 0, runs = 0;
const work = async () => {
  try { await (await open(inside, 'wx')).close(); } catch { overlaps += 1; return; }
  await new Promise((r) => setTimeout(r, Math.random() < 0.5 ? 0 : 1));
  await unlink(inside);
  runs += 1;
};
for (let round = 0; round < 25; round += 1) {
  if (round % 3 === 0) {
    const numbers = (await readdir(stateDir + '/.claims')).map((name) => Number(name.split('.').pop())).filter(Number.isSafeInteger);
    await symlink(claimTarget('sweeper', Number(dead), Date.now() + 60000), claimEntryPath(stateDir, ${JSON.stringify(ID)}, Math.max(0, ...numbers) + 1)).catch(() => {});
  }
  const outcomes = await Promise.all([0, 1, 2].map(() => withVmClaim(stateDir, ${JSON.stringify(ID)}, 'create-vm', { waitMs: 30000 }, work)));
  if (!outcomes.every((o) => o.ran)) throw new Error('a taker did not run');
}
console.log(JSON.stringify({ overlaps, runs }));
`,
  );
  const dead = String(gonePid());
  const children = [0, 1, 2, 3].map(() => spawn(process.execPath, ['--import', 'tsx', script, stateDir, inside, dead], { stdio: ['ignore', 'pipe', 'inherit'] }));
  t.after(() => children.forEach((child) => child.kill('SIGKILL')));
  const results = await Promise.all(
    children.map(
      (child) =>
        new Promise<{ overlaps: number; runs: number }>((resolve, reject) => {
          let out = '';
          child.stdout!.on('data', (chunk: Buffer) => (out += chunk));
          child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { overlaps: number; runs: number }) : reject(new Error(`a taker process exited ${code}: ${out}`))));
        }),
    ),
  );
  assert.deepEqual(results.map((r) => r.overlaps), [0, 0, 0, 0], 'two takers were inside at once');
  assert.deepEqual(results.map((r) => r.runs), [75, 75, 75, 75]);
  assert.deepEqual(await readdir(claimsDir(stateDir)), [], 'an entry was left');
});
