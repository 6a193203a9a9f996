/**
 * Replies the RabbitMQ client cannot read (over its own limits.maxMessageBytes, or breaking the reply
 * schema) end their request at once with the reason, and in a gather count as that host's error reply:
 * the host did answer, so it is not "missing". Against the shared broker, under a prefix of the test's own.
 */
import assert from 'node:assert/strict';
import test, { type TestContext } from 'node:test';
import amqplib from 'amqplib';
import { makeRequest, type RequestEnvelope } from '../../core/envelope.ts';
import { CloudletError } from '../../core/errors.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { topLevelString } from '../../core/transports/ndjson.ts';
import { startCloud, type Cloud } from '../support/cloud.ts';

/** Replies over this client's limit: test.blob answers with at least 50 000 bytes. */
const CLIENT_LIMIT = 10_000;
const BLOB = { bytes: 50_000 };

function isCode(code: string, details?: Record<string, unknown>) {
  return (error: unknown) => {
    assert.ok(error instanceof CloudletError, `expected a CloudletError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (details) for (const [key, value] of Object.entries(details)) assert.deepEqual((error.details as Record<string, unknown>)[key], value);
    return true;
  };
}

/**
 * A stand-in host `id` that takes direct requests and broadcasts, heartbeats (so clients expect it in a
 * gather), and answers every request with `answer(request)` as the reply body. Its queues go when the test ends.
 */
async function fakeHost(t: TestContext, cloud: Cloud, id: string, answer: (request: RequestEnvelope) => unknown) {
  const names = amqpNames(cloud.prefix);
  const connection = await amqplib.connect(cloud.url);
  let heartbeat: ReturnType<typeof setInterval> | undefined;
  t.after(async () => {
    clearInterval(heartbeat);
    const cleanup = await connection.createChannel();
    await cleanup.deleteQueue(names.hostQueue(id)).catch(() => undefined);
    await connection.close().catch(() => undefined);
  });
  const channel = await connection.createChannel();
  // startCloud's teardown runs first (after-hooks run in registration order) and deletes the presence
  // exchange; a beat published after that makes the broker close this channel. That is the fake's end, not
  // an error: without a listener it would be thrown and fail whichever test is running.
  channel.on('error', () => clearInterval(heartbeat));
  connection.on('error', () => clearInterval(heartbeat));
  const hostQueue = names.hostQueue(id);
  await channel.assertQueue(hostQueue, { durable: true, arguments: { 'x-dead-letter-exchange': names.deadLetter } });
  await channel.bindQueue(hostQueue, names.directExchange, id);
  const { queue: broadcastQueue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
  await channel.bindQueue(broadcastQueue, names.broadcastExchange, '');
  const onRequest = (msg: amqplib.ConsumeMessage | null) => {
    if (!msg) return;
    const request = JSON.parse(msg.content.toString('utf8')) as RequestEnvelope;
    channel.sendToQueue(msg.properties.replyTo as string, Buffer.from(JSON.stringify(answer(request))), { correlationId: msg.properties.correlationId });
    channel.ack(msg);
  };
  await channel.consume(hostQueue, onRequest);
  await channel.consume(broadcastQueue, onRequest);
  const beat = () =>
    channel.publish(
      names.presenceExchange,
      '',
      Buffer.from(JSON.stringify({ v: 1, kind: 'heartbeat', host: id, version: 'test', plugins: [], routes: ['direct', 'broadcast'], startedAt: Date.now(), sentAt: Date.now() })),
    );
  beat();
  heartbeat = setInterval(beat, 200);
}

/** A reply that breaks the schema: `ok` is true, yet it carries an error. */
const brokenReply = (request: RequestEnvelope, host: string) => ({ v: 1, kind: 'reply', id: request.id, host, ok: true, error: { code: 'X', message: 'both' } });

test('amqp client — a direct reply over its own maxMessageBytes fails the request with MESSAGE_TOO_LARGE, not CLIENT_TIMEOUT', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 10_000, maxMessageBytes: CLIENT_LIMIT });
  await assert.rejects(client.request(makeRequest({ type: 'test.blob', target: 'h1', payload: BLOB })), isCode('MESSAGE_TOO_LARGE', { maxBytes: CLIENT_LIMIT }));
  // The client stays usable, and a small reply still comes through.
  const small = await client.request(makeRequest({ type: 'test.blob', target: 'h1', payload: { bytes: 10 } }));
  assert.equal(small.ok, true);
});

test('amqp client — an any-host reply over its own maxMessageBytes fails the request with MESSAGE_TOO_LARGE', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 10_000, maxMessageBytes: CLIENT_LIMIT });
  await assert.rejects(client.request(makeRequest({ type: 'test.blob', payload: BLOB })), isCode('MESSAGE_TOO_LARGE', { maxBytes: CLIENT_LIMIT }));
});

test('amqp client — a gather lists each host whose reply is over the limit as that host\'s MESSAGE_TOO_LARGE error, not as missing', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }, { id: 'h2' }]);
  const client = cloud.client({ inactivityTimeoutMs: 10_000, maxMessageBytes: CLIENT_LIMIT });
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} })); // the registry knows both hosts
  const seen: string[] = [];
  const request = makeRequest({ type: 'test.blob', payload: BLOB, deadline: Date.now() + 15_000 });
  const result = await client.gather(request, { onReply: (reply) => seen.push(reply.host) });
  assert.deepEqual(result.missing, []);
  assert.deepEqual(result.replies.map((reply) => reply.host).sort(), ['h1', 'h2']);
  for (const reply of result.replies) {
    assert.equal(reply.ok, false);
    assert.equal(reply.id, request.id);
    assert.equal(reply.error?.code, 'MESSAGE_TOO_LARGE');
    assert.equal((reply.error?.details as { maxBytes?: number }).maxBytes, CLIENT_LIMIT);
  }
  assert.deepEqual(seen.sort(), ['h1', 'h2'], 'onReply is told of them too');
});

test('amqp client — a reply that breaks the reply schema fails its request with BAD_ENVELOPE, and is that host\'s error in a gather', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 10_000 });
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} })); // connected: the topology exists
  await fakeHost(t, cloud, 'fake', (request) => brokenReply(request, 'fake'));
  await assert.rejects(client.request(makeRequest({ type: 'test.echo', target: 'fake', payload: {} })), isCode('BAD_ENVELOPE'));

  const request = makeRequest({ type: 'host-info', deadline: Date.now() + 15_000 });
  const result = await client.gather(request);
  assert.deepEqual(result.missing, []);
  const byHost = new Map(result.replies.map((reply) => [reply.host, reply]));
  assert.deepEqual([...byHost.keys()].sort(), ['fake', 'h1']);
  assert.equal(byHost.get('h1')?.ok, true);
  assert.equal(byHost.get('fake')?.ok, false);
  assert.equal(byHost.get('fake')?.error?.code, 'BAD_ENVELOPE');
});

test('topLevelString — reads a top-level key only, and nothing cut off', () => {
  assert.equal(topLevelString('{"v":1,"result":{"host":"inner"},"host":"h1","ok":true}', 'host'), 'h1');
  assert.equal(topLevelString('{"v":1,"result":{"host":"inner"}', 'host'), undefined);
  assert.equal(topLevelString('{"v":1,"host":"h1', 'host'), undefined, 'a value cut off by the end of the head');
  assert.equal(topLevelString('{"note":"\\"host\\":\\"x\\"","host":"h2"}', 'host'), 'h2', 'escaped quotes inside a string');
});
