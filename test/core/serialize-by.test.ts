import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeRequest, type ReplyEnvelope, type RequestEnvelope } from '../../core/envelope.ts';
import type { Agent } from '../../core/agent.ts';
import { startAgent, tempDir, until } from '../helpers.ts';

const serialLockPath = fileURLToPath(new URL('../fixtures/plugins/serial-lock/index.ts', import.meta.url));
// Holders still waiting when a test ends are cancelled at once when its agent stops.
const withSerialLock = { plugins: [{ use: serialLockPath }], shutdown: { graceMs: 0 } };

/**
 * Sends `request` on a connection of its own and resolves with its reply, ignoring progress. No client-side
 * timeout tied to the request's deadline: `guardMs` only keeps a broken agent from hanging the test.
 */
function replyOf(socketPath: string, request: RequestEnvelope, guardMs = 20_000): Promise<ReplyEnvelope> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let buffer = '';
    const done = (error: Error | undefined, reply?: ReplyEnvelope) => {
      clearTimeout(guard);
      socket.destroy();
      if (error) reject(error);
      else resolve(reply as ReplyEnvelope);
    };
    const guard = setTimeout(() => done(new Error(`no reply to ${request.type} (${request.id}) within ${guardMs} ms`)), guardMs);
    socket.on('error', (error) => done(error));
    socket.on('data', (chunk) => {
      buffer += chunk.toString('utf8');
      for (let newline = buffer.indexOf('\n'); newline !== -1; newline = buffer.indexOf('\n')) {
        const envelope = JSON.parse(buffer.slice(0, newline)) as ReplyEnvelope;
        buffer = buffer.slice(newline + 1);
        if (envelope.kind === 'reply' && envelope.id === request.id) return done(undefined, envelope);
      }
    });
    socket.write(`${JSON.stringify(request)}\n`);
  });
}

function poolOf(agent: Agent, type: string) {
  const stats = agent.pools?.stats().find((s) => s.type === type);
  assert.ok(stats, `no pool for ${type}`);
  return stats;
}

/** Waits until `check` holds; fails after 10 s with `what`. */
/** Starts a lock.step that holds `key` until the returned `release` is called; resolves once it holds it. */
async function holdKey(client: Awaited<ReturnType<typeof startAgent>>['client'], dir: string, key: string) {
  const releaseFile = join(dir, `release-${key}`);
  let holding!: () => void;
  const held = new Promise<void>((resolve) => (holding = resolve));
  const reply = client.request(makeRequest({ type: 'lock.step', payload: { key, mode: 'hold', until: releaseFile } }), {
    onProgress: (progress) => {
      if (progress.stage === 'holding') holding();
    },
  });
  let settled = false;
  void reply.then(
    () => (settled = true),
    () => (settled = true),
  );
  await Promise.race([held, reply.then((r) => assert.fail(`the holder ended before it held the key: ${JSON.stringify(r)}`))]);
  return { reply, isSettled: () => settled, release: () => writeFile(releaseFile, '') };
}

test('serializeBy — a message waiting for its lock is counted by its pool: it shows as queued, and past maxQueue the next is BUSY', async (t) => {
  const { agent, client } = await startAgent(t, { ...withSerialLock, pools: { 'lock.step': { maxThreads: 1, maxQueue: 1 } } });
  const dir = await tempDir(t);
  const holder = await holdKey(client, dir, 'vm1');
  const waiter = client.request(makeRequest({ type: 'lock.step', payload: { key: 'vm1' } }));
  await until(() => poolOf(agent, 'lock.step').queued === 1, 10_000, 'the message waiting for the lock of vm1 to show as queued');
  // One running, one waiting (for the lock): the pool is full, whichever key the next one names.
  const refused = await client.request(makeRequest({ type: 'lock.step', payload: { key: 'vm1' } }));
  assert.equal(refused.error?.code, 'BUSY', JSON.stringify(refused));
  assert.equal(holder.isSettled(), false);
  await holder.release();
  assert.equal((await holder.reply).ok, true);
  assert.deepEqual((await waiter).result, { mode: 'echo', key: 'vm1' });
  assert.equal(poolOf(agent, 'lock.step').queued, 0);
});

test('serializeBy — a message whose time runs out while it waits for its lock is answered then, and the next one still waits for the holder', async (t) => {
  const { agent, client, socketPath } = await startAgent(t, { ...withSerialLock, pools: { 'lock.step': { maxThreads: 2 } } });
  const dir = await tempDir(t);
  const holder = await holdKey(client, dir, 'vm1');

  // The holder never finishes by itself: these answers can only come from the waiters' own budgets.
  const pastDeadline = await replyOf(socketPath, makeRequest({ type: 'lock.step', payload: { key: 'vm1' }, deadline: Date.now() + 2_000 }));
  assert.equal(pastDeadline.error?.code, 'DEADLINE_EXCEEDED', JSON.stringify(pastDeadline));
  assert.match(pastDeadline.error?.message ?? '', /could not start before its deadline/);
  const pastTimeout = await replyOf(socketPath, makeRequest({ type: 'lock.quick', payload: { key: 'vm1' } }));
  assert.equal(pastTimeout.error?.code, 'TIMEOUT', JSON.stringify(pastTimeout));
  assert.deepEqual(pastTimeout.error?.details, { type: 'lock.quick', timeoutMs: 1_000 });
  assert.equal(holder.isSettled(), false, 'the holder is still running');
  assert.equal(poolOf(agent, 'lock.step').queued, 0, 'the messages that gave up no longer count as queued');

  // Those two gave their places up; the next in line still waits for the holder, with a thread free for it.
  let nextSettled = false;
  const next = client.request(makeRequest({ type: 'lock.step', payload: { key: 'vm1' } }));
  void next.finally(() => (nextSettled = true)).catch(() => undefined);
  await until(() => nextSettled || poolOf(agent, 'lock.step').queued === 1, 10_000, 'the next message for vm1 to wait or to finish');
  assert.equal(nextSettled, false, 'the next message ran while the holder still held the lock');
  await holder.release();
  assert.equal((await holder.reply).ok, true);
  assert.deepEqual((await next).result, { mode: 'echo', key: 'vm1' });
});

test('serializeBy — messages for another key, or for none, do not wait for a held lock', async (t) => {
  const { agent, client } = await startAgent(t, { ...withSerialLock, pools: { 'lock.step': { maxThreads: 2 } } });
  const dir = await tempDir(t);
  const holder = await holdKey(client, dir, 'vm1');
  const other = await client.request(makeRequest({ type: 'lock.step', payload: { key: 'vm2' } }));
  assert.deepEqual(other.result, { mode: 'echo', key: 'vm2' });
  const unkeyed = await client.request(makeRequest({ type: 'lock.step', payload: {} }));
  assert.equal(unkeyed.ok, true);
  assert.equal(holder.isSettled(), false);
  assert.equal(poolOf(agent, 'lock.step').queued, 0);
  await holder.release();
  assert.equal((await holder.reply).ok, true);
});

test('serializeBy — a lock value JSON cannot spell (a BigInt, a cyclic object from a transform) is answered, and leaves nothing running', async (t) => {
  const { agent, socketPath } = await startAgent(t, withSerialLock);
  // Before: building the lock key threw inside the dispatcher; nobody answered, and the message stayed
  // counted as in flight with its keep-alive timer running, so a stop waited out its whole grace period.
  const bigint = await replyOf(socketPath, makeRequest({ type: 'lock.bigint', payload: { key: 'seven!!' } }));
  assert.equal(bigint.ok, true, JSON.stringify(bigint.error));
  assert.deepEqual(bigint.result, { mode: 'echo', key: '7' });
  const cyclic = await replyOf(socketPath, makeRequest({ type: 'lock.cyclic', payload: { key: 'loop' } }));
  assert.equal(cyclic.ok, false);
  assert.equal(cyclic.error?.code, 'INVALID_PAYLOAD');
  assert.match(String(cyclic.error?.message), /payload\.key.*cannot serve as the lock key of "lock\.cyclic"/);
  assert.equal(agent.inFlight, 0);
});
