import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Buffer } from 'node:buffer';
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
    store.recordDone(`id-${i}`, makeReply({ id: `id-${i}`, type: 'test.echo' }, 'h1', { ok: true, result: i }));
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
  store.recordDone('id-"quoted"', reply, JSON.stringify(reply));
  assert.deepEqual(store.replyFor('id-"quoted"'), reply);
  store.flush();
  const reopened = await OutcomeStore.open(file, 100);
  assert.deepEqual(reopened.replyFor('id-"quoted"'), reply);
  const line = JSON.parse((await readFile(file, 'utf8')).trim()) as Record<string, unknown>;
  assert.deepEqual([line.id, line.t, typeof line.at], ['id-"quoted"', 'done', 'number']);
});

const lines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter(Boolean);

test('outcome store — the start lines of one synchronous burst are written together, before any of their promises resolves', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  await store.recordStart('first');
  assert.equal(lines(file).length, 1, 'written by the time its promise resolved');
  const burst = ['a', 'b', 'c'].map((id) => store.recordStart(id));
  assert.equal(lines(file).length, 1, 'not written one by one while the burst runs');
  assert.equal(store.attempts('b'), 1, 'but counted at once');
  await burst[0];
  assert.deepEqual(lines(file).map((line) => (JSON.parse(line) as { id: string }).id), ['first', 'a', 'b', 'c'], 'the whole burst, in order, when the first resolves');
  await Promise.all(burst);
});

test('outcome store — a done line waits for flush() (the transport calls it before the reply is sent); close() writes what is left', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  const reply = (id: string) => makeReply({ id, type: 'test.echo' }, 'h1', { ok: true, result: id });
  store.recordDone('one', reply('one'));
  assert.equal(store.replyFor('one')?.result, 'one', 'a copy arriving now is answered from it');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(readFileSync(file, { flag: 'a+' }).length, 0, 'not written before flush()');
  store.flush();
  assert.equal(lines(file).length, 1);
  store.recordDone('two', reply('two'));
  store.close();
  const reopened = await OutcomeStore.open(file, 100);
  assert.deepEqual([reopened.replyFor('one')?.result, reopened.replyFor('two')?.result], ['one', 'two']);
});

test('outcome store — a rewrite while lines are pending keeps their outcomes and does not write them twice', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 5);
  for (let i = 0; i < 23; i++) store.recordDone(`id-${i}`, makeReply({ id: `id-${i}`, type: 'test.echo' }, 'h1', { ok: true, result: i }));
  assert.ok(store.compactions >= 1, 'the bound was crossed with nothing flushed');
  store.flush();
  const ids = lines(file).map((line) => (JSON.parse(line) as { id: string }).id);
  assert.equal(new Set(ids).size, ids.length, `no line twice: ${ids.join(' ')}`);
  const reopened = await OutcomeStore.open(file, 5);
  assert.deepEqual([18, 19, 20, 21, 22].map((i) => reopened.replyFor(`id-${i}`)?.result), [18, 19, 20, 21, 22]);
  assert.equal(reopened.replyFor('id-17'), undefined, 'older ones evicted');
});

test('outcome store — a file that cannot be written fails the start (the request must not run) and the flush (the reply must not leave); once fixed, the next write works', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  // The file is opened at the first write: make that a device that is always full.
  symlinkSync('/dev/full', file);
  await assert.rejects(store.recordStart('a'), /ENOSPC/);
  store.cancelStart('a'); // as the agent does when it refuses the request
  // Fixed (here: the link removed): the next write opens the file again, no restart needed.
  unlinkSync(file);
  await store.recordStart('d');
  assert.deepEqual(lines(file).map((line) => (JSON.parse(line) as { id: string }).id), ['d']);

  store.close();
  unlinkSync(file);
  symlinkSync('/dev/full', file);
  store.recordDone('b', makeReply({ id: 'b', type: 'test.echo' }, 'h1', { ok: true, result: 'b' }));
  assert.throws(() => store.flush(), /ENOSPC/);
  store.recordDone('c', makeReply({ id: 'c', type: 'test.echo' }, 'h1', { ok: true, result: 'c' }));
  assert.throws(() => store.close(), /ENOSPC/, 'close says the last lines were lost');
});

test('outcome store — lines a full disk refused are kept and written later, none lost; a start that was refused is forgotten', async (t) => {
  const file = join(await tempDir(t), 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  symlinkSync('/dev/full', file);
  store.recordDone('done-while-full', makeReply({ id: 'done-while-full', type: 'test.echo' }, 'h1', { ok: true, result: 1 }));
  assert.throws(() => store.flush(), /ENOSPC/);
  assert.equal(store.hasUnwritten('done-while-full'), true, 'its reply must wait');
  assert.equal(store.hasUnwritten('done-while'), false, 'another id (a prefix of it) has nothing unwritten');
  await assert.rejects(store.recordStart('refused'), /ENOSPC/);
  store.cancelStart('refused');
  assert.equal(store.attempts('refused'), 0, 'a refused start is no attempt');
  unlinkSync(file); // the disk has room again
  store.flush();
  assert.equal(store.hasUnwritten('done-while-full'), false);
  assert.deepEqual(lines(file).map((line) => (JSON.parse(line) as { id: string }).id), ['done-while-full'], 'kept and written; the cancelled start never reaches the file');
  const reopened = await OutcomeStore.open(file, 100);
  assert.equal(reopened.replyFor('done-while-full')?.result, 1);
  assert.equal(reopened.attempts('refused'), 0);
});

test('outcome store — a disk that fills up in the middle of a line: the torn line is ended, and every line reads back', async (t) => {
  // A small tmpfs of its own, so it runs as root like the suite's network-namespace tests (no skip).
  const dir = mkdtempSync(join(tmpdir(), 'cloudlet-full-disk-'));
  let mounted = false;
  t.after(() => {
    if (mounted) execFileSync('umount', [dir]);
    rmSync(dir, { recursive: true, force: true });
  });
  // 16 pages, 15 of them taken: the outcome file gets one.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]);
  mounted = true;
  writeFileSync(join(dir, 'filler'), Buffer.alloc(15 * 4096));
  const file = join(dir, 'outcomes.jsonl');
  const store = await OutcomeStore.open(file, 100);
  const reply = (id: string, size: number) => makeReply({ id, type: 'test.echo' }, 'h1', { ok: true, result: 'x'.repeat(size) });
  store.recordDone('small', reply('small', 1000));
  store.flush();
  store.recordDone('large', reply('large', 8000)); // more than the page left: written in part, then ENOSPC
  assert.throws(() => store.flush(), /ENOSPC/);
  assert.ok(readFileSync(file, 'utf8').length > 1100, 'part of the large line went in (else this test proves nothing)');
  unlinkSync(join(dir, 'filler'));
  store.flush();
  store.close();
  const reopened = await OutcomeStore.open(file, 100);
  assert.equal((reopened.replyFor('small')?.result as string).length, 1000);
  assert.equal((reopened.replyFor('large')?.result as string).length, 8000);
});
