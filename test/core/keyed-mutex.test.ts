import assert from 'node:assert/strict';
import test from 'node:test';
import { KeyedMutex } from '../../core/keyed-mutex.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('keyed mutex — work on one key runs in order, one at a time; other keys run alongside', async () => {
  const mutex = new KeyedMutex();
  const events: string[] = [];
  const job = (key: string, name: string, ms: number) =>
    mutex.run(key, async () => {
      events.push(`start ${name}`);
      await sleep(ms);
      events.push(`end ${name}`);
      return name;
    });
  const results = await Promise.all([job('vm1', 'a', 60), job('vm1', 'b', 10), job('vm2', 'c', 10)]);
  assert.deepEqual(results, ['a', 'b', 'c']);
  // b waits for a; c (another key) does not.
  assert.ok(events.indexOf('end a') < events.indexOf('start b'));
  assert.ok(events.indexOf('start c') < events.indexOf('end a'));
  assert.equal(mutex.size, 0, 'no lock is kept once its work is done');
});

test('keyed mutex — a failing holder releases the key', async () => {
  const mutex = new KeyedMutex();
  await assert.rejects(mutex.run('k', async () => Promise.reject(new Error('boom'))));
  assert.equal(await mutex.run('k', async () => 'next'), 'next');
});

test('keyed mutex — a waiter that gives up leaves the line; those behind it, and those after it, still wait for the holder', async () => {
  const mutex = new KeyedMutex();
  const holder = mutex.acquire('k');
  await holder.acquired;
  const quitter = mutex.acquire('k');
  const behind = mutex.acquire('k');
  const got: string[] = [];
  void behind.acquired.then(() => got.push('behind'));
  quitter.release(); // its time ran out while it waited
  const after = mutex.acquire('k');
  void after.acquired.then(() => got.push('after'));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(got, [], 'nobody may go while the holder holds the key');
  holder.release();
  await behind.acquired;
  assert.deepEqual(got, ['behind']);
  behind.release();
  await after.acquired;
  assert.deepEqual(got, ['behind', 'after']);
  after.release();
  assert.equal(mutex.size, 0);
});

test('keyed mutex — the last waiter giving up does not free the key while its holder runs', async () => {
  const mutex = new KeyedMutex();
  const holder = mutex.acquire('k');
  await holder.acquired;
  const quitter = mutex.acquire('k');
  quitter.release();
  quitter.release(); // twice does nothing more
  let lateGotIt = false;
  const late = mutex.acquire('k');
  void late.acquired.then(() => (lateGotIt = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(lateGotIt, false, 'a newcomer went while the holder held the key');
  assert.equal(mutex.size, 1);
  holder.release();
  await late.acquired;
  late.release();
  assert.equal(mutex.size, 0);
});
