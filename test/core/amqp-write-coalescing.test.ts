/**
 * core/transports/amqp/coalesce-writes.ts against a real broker: the frames amqplib queues in one
 * event-loop turn reach the socket in one write, and every message still arrives. It also fails when an
 * amqplib upgrade moves the internals the coalescing relies on (it would then silently do nothing).
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import test, { type TestContext } from 'node:test';
import amqplib, { type Channel, type ChannelModel } from 'amqplib';
import { createLogger, memoryDestination } from '../../core/logger.ts';
import { BrokerConnection, type BrokerConnectionOptions } from '../../core/transports/amqp/connection.ts';
import { SHARED_BROKER } from '../support/cloud.ts';

const MESSAGES = 20;

/** An open BrokerConnection with one plain channel; `model` and `channel` are the current ones (after a reconnect too). */
async function openConnection(t: TestContext, options: Partial<BrokerConnectionOptions> = {}) {
  let model!: ChannelModel;
  let channel!: Channel;
  const connection = new BrokerConnection({
    url: SHARED_BROKER,
    log: createLogger({ level: 'silent', format: 'json' }),
    ...options,
    setup: async (fresh) => {
      model = fresh;
      channel = await fresh.createChannel();
    },
  });
  t.after(() => connection.close());
  await connection.open();
  return { connection, model: () => model, channel: () => channel };
}

/** Counts the socket's writes from now on (each _write or _writev is one trip to the kernel). */
function countSocketWrites(model: ChannelModel): { readonly count: number } {
  const socket = (model as unknown as { connection: { stream: { _write: (...a: unknown[]) => void; _writev?: (...a: unknown[]) => void } } }).connection.stream;
  const counter = { count: 0 };
  const write = socket._write.bind(socket);
  socket._write = (...args: unknown[]) => (counter.count++, write(...args));
  const writev = socket._writev?.bind(socket);
  if (writev) socket._writev = (...args: unknown[]) => (counter.count++, writev(...args));
  return counter;
}

test('amqp — one event-loop turn of frames is one socket write, and every message arrives', { timeout: 60_000 }, async (t) => {
  const memory = memoryDestination();
  const { connection, model, channel } = await openConnection(t, { log: createLogger({ level: 'debug', format: 'json', destination: memory.stream }) });
  assert.equal(connection.coalescesWrites, true, `amqplib's internals moved; the log says: ${JSON.stringify(memory.lines())}`);

  const queue = `cloudlet-test-coalesce-${randomUUID()}`;
  await channel().assertQueue(queue, { exclusive: true, autoDelete: true });

  const writes = countSocketWrites(model());
  for (let i = 0; i < MESSAGES; i++) channel().sendToQueue(queue, Buffer.from(`m${i}`));
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  // Without coalescing this is one write per message (20); the cork makes it one.
  assert.ok(writes.count >= 1 && writes.count <= 2, `${MESSAGES} publishes in one turn took ${writes.count} socket writes`);

  const received: string[] = [];
  for (let tries = 0; received.length < MESSAGES && tries < 200; tries++) {
    const message = await channel().get(queue, { noAck: true });
    if (message) received.push(message.content.toString());
    else await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.deepEqual(received, Array.from({ length: MESSAGES }, (_, i) => `m${i}`));
});

test('amqp — a burst far over the socket buffer still goes out whole and in order (backpressure with the cork)', { timeout: 120_000 }, async (t) => {
  const { connection, model, channel } = await openConnection(t);
  assert.equal(connection.coalescesWrites, true);
  const queue = `cloudlet-test-coalesce-burst-${randomUUID()}`;
  await channel().assertQueue(queue, { exclusive: true, autoDelete: true });

  const muxer = (model() as unknown as { connection: { muxer: { blocked: boolean; out: { write: (...a: unknown[]) => boolean } } } }).connection.muxer;
  // Count the writes the socket refused (over its high-water mark): each makes the pass stop for 'drain'.
  let refused = 0;
  const write = muxer.out.write.bind(muxer.out);
  muxer.out.write = (...args: unknown[]) => {
    const accepted = write(...args);
    if (!accepted) refused++;
    return accepted;
  };
  const count = 60;
  const body = (i: number) => Buffer.alloc(256 * 1024, i % 251);
  // 15 MiB in one turn: the corked pass must stop at the socket's high-water mark and wait for 'drain'.
  for (let i = 0; i < count; i++) channel().sendToQueue(queue, body(i), { messageId: String(i) });

  const received: string[] = [];
  for (let tries = 0; received.length < count && tries < 2_000; tries++) {
    const message = await channel().get(queue, { noAck: true });
    if (!message) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      continue;
    }
    const i = Number(message.properties.messageId);
    assert.ok(message.content.equals(body(i)), `message ${i} arrived intact`);
    received.push(String(i));
  }
  assert.deepEqual(received, Array.from({ length: count }, (_, i) => String(i)));
  assert.ok(refused > 0, 'the burst met backpressure (else this test proves nothing about it)');
  assert.equal(muxer.blocked, false, 'and the multiplexer went on after the drain');
});

test('amqp — beforeFrameWrite runs before each batch reaches the socket; when it throws, the batch is not sent and the connection drops and comes back', { timeout: 60_000 }, async (t) => {
  let writes: { readonly count: number } = { count: 0 };
  const writesSeenByHook: number[] = [];
  let failNext = false;
  const { connection, model, channel } = await openConnection(t, {
    maxReconnectDelayMs: 200,
    beforeFrameWrite: () => {
      writesSeenByHook.push(writes.count);
      if (failNext) {
        failNext = false;
        throw new Error('the outcome file is not writable (test)');
      }
    },
  });
  assert.equal(connection.coalescesWrites, true);
  const queue = `cloudlet-test-before-write-${randomUUID()}`;
  await channel().assertQueue(queue, { durable: false, autoDelete: false });
  t.after(async () => {
    const cleanup = await amqplib.connect(SHARED_BROKER);
    await (await cleanup.createChannel()).deleteQueue(queue);
    await cleanup.close();
  });

  writes = countSocketWrites(model());
  const before = writes.count;
  writesSeenByHook.length = 0;
  channel().sendToQueue(queue, Buffer.from('kept'));
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(writesSeenByHook.slice(0, 1), [before], 'the hook ran before the batch was written');
  assert.equal(writes.count, before + 1, 'and the batch went out in one write after it');

  const down = new Promise((resolve) => connection.once('down', resolve));
  failNext = true;
  channel().sendToQueue(queue, Buffer.from('held back'));
  await down;
  const up = new Promise((resolve) => connection.once('up', resolve));
  await up;
  const inspect = await amqplib.connect(SHARED_BROKER);
  try {
    const reader = await inspect.createChannel();
    const first = await reader.get(queue, { noAck: true });
    assert.equal(first && first.content.toString(), 'kept');
    assert.equal(await reader.get(queue, { noAck: true }), false, 'the batch whose hook threw never reached the broker');
  } finally {
    await inspect.close();
  }
});

test('amqp — beforeFrameWrite throwing while a dropped connection is set up again fails that set-up, not the process; it comes back once the hook works', { timeout: 60_000 }, async (t) => {
  let failing = false;
  let thrown = 0;
  const { connection, model } = await openConnection(t, {
    maxReconnectDelayMs: 200,
    beforeFrameWrite: () => {
      if (!failing) return;
      thrown++;
      throw new Error('the outcome file is not writable (test)');
    },
  });
  const down = new Promise((resolve) => connection.once('down', resolve));
  failing = true;
  // Drop the socket: recovery sets a new connection up, and the hook fails its first write pass. Before,
  // that socket error reached a model nobody listened on yet: an uncaught exception ended the process.
  (model() as unknown as { connection: { stream: { destroy(error: Error): void } } }).connection.stream.destroy(new Error('dropped by the test'));
  await down;
  const deadline = Date.now() + 10_000;
  while (thrown < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.ok(thrown >= 2, `set-ups were tried again after the hook failed (${thrown} failures)`);
  assert.equal(connection.isUp, false, 'and none came up while the hook failed');
  const up = new Promise((resolve) => connection.once('up', resolve));
  failing = false;
  await up;
});
