/** The dispatcher on its own, with stand-in pools: what it does when a part behind it fails. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import test from 'node:test';
import { loadHostConfig } from '../../core/config/host-config.ts';
import { rawConfigFrom } from '../../core/config/load.ts';
import { Dispatcher } from '../../core/dispatcher.ts';
import { makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import { silentLogger } from '../../core/logger.ts';
import type { PoolManager } from '../../core/pools.ts';
import { tempDir, testkitPath } from '../helpers.ts';

test('dispatcher — a pool that throws (a bug) still gets its caller an INTERNAL reply with the request id, once', async (t) => {
  const config = await loadHostConfig(rawConfigFrom({ host: { id: 'h1' }, plugins: [{ use: testkitPath, options: {} }] }, join(await tempDir(t), 'cloudlet.yaml')));
  const brokenPools = {
    run: () => {
      throw new Error('a bug in the pool');
    },
  } as unknown as PoolManager;
  const dispatcher = new Dispatcher({ hostId: 'h1', maxMessageBytes: 1 << 20, keepaliveMs: 60_000, routes: config.messages, pools: brokenPools, log: silentLogger() });
  const replies: ReplyEnvelope[] = [];
  let answered!: () => void;
  const replied = new Promise<void>((resolve) => (answered = resolve));
  const request = makeRequest({ type: 'test.echo', payload: { value: 1 } });
  dispatcher.handle({
    body: JSON.stringify(request),
    replyable: true,
    reply: async (envelope) => {
      replies.push(envelope);
      answered();
    },
    progress: () => undefined,
  });
  // Before: the error was only logged; nobody answered, and the caller waited for its own timeout.
  const guard = setTimeout(() => answered(), 10_000);
  await replied;
  clearTimeout(guard);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(replies.length, 1, 'exactly one reply');
  assert.equal(replies[0]?.id, request.id);
  assert.equal(replies[0]?.ok, false);
  assert.equal(replies[0]?.error?.code, 'INTERNAL');
  assert.match(String(replies[0]?.error?.message), /host "h1" failed while handling the message: a bug in the pool/);
  assert.equal(dispatcher.inFlightCount, 0, 'nothing left counted as running');
});
