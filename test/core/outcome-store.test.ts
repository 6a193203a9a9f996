import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { makeReply } from '../../core/envelope.ts';
import { OutcomeStore } from '../../core/transports/amqp/outcome-store.ts';
import { tempDir } from '../helpers.ts';

test('outcome store — stays bounded: a full store compacts to one line per entry and does not thrash', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  for (let i = 0; i < 1_000; i++) {
    await store.recordStart(`id-${i}`);
    await store.recordDone(`id-${i}`, makeReply({ id: `id-${i}`, type: 'test.echo' }, 'h1', { ok: true, result: i }));
  }
  await store.recordStart('unfinished');
  await store.recordStart('unfinished');
  // 2,002 lines written for a bound of 100: a rewrite every ~100 lines at most, not one per line.
  assert.ok(store.compactions <= 25, `${store.compactions} rewrites of the whole file`);
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean).length;
  assert.ok(lines <= 2 * 100 + 2, `the file holds ${lines} lines for a bound of 100 entries`);
  const reopened = await OutcomeStore.open(file, 100);
  assert.equal(reopened.replyFor('id-999')?.result, 999);
  assert.equal(reopened.replyFor('id-0'), undefined, 'the oldest outcomes were evicted');
  assert.equal(reopened.attempts('unfinished'), 2);
});

test('outcome store — a reply recorded with its JSON (as the dispatcher sends it) reads back the same after a restart', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  const reply = makeReply({ id: 'id-"quoted"', type: 'list-vms' }, 'h1', { ok: true, result: { vms: [{ id: 'h1.abcdefgh', name: 'ünïcode' }] } });
  await store.recordDone('id-"quoted"', reply, JSON.stringify(reply));
  assert.deepEqual(store.replyFor('id-"quoted"'), reply);
  const reopened = await OutcomeStore.open(file, 100);
  assert.deepEqual(reopened.replyFor('id-"quoted"'), reply);
  const line = JSON.parse((await readFile(file, 'utf8')).trim()) as Record<string, unknown>;
  assert.deepEqual([line.id, line.t, typeof line.at], ['id-"quoted"', 'done', 'number']);
});
