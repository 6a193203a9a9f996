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
