/**
 * Events over a broker's max_message_size, from the agent transport in process: the first is refused on
 * the large-message channel (no reconnect), later ones are refused before they are sent, and events within
 * the limit go on; and a broker limit so small that not even an error reply fits. Replies are tested end to
 * end in test/e2e/amqp-broker-faults.test.ts ('broker limits').
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeEvent, makeReply, makeRequest, type RequestEnvelope } from '../../core/envelope.ts';
import { createLogger, memoryDestination } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { until } from '../helpers.ts';
import { startRabbitNode } from '../support/rabbit-node.ts';

/**
 * An isolated RabbitMQ node with `maxMessageBytes` as its max_message_size, an agent transport for host h1
 * on it (not listening yet; its log kept in memory), and an admin channel. All closed when the test ends,
 * the transport and connection before the node.
 */
async function agentOnLimitedBroker(t: TestContext, name: string, maxMessageBytes: number) {
  let transport: AmqpAgentTransport | undefined;
  let connection: amqplib.ChannelModel | undefined;
  // Registered before the node's own cleanup (hooks run in order): both close while the broker is up.
  t.after(async () => {
    await connection?.close().catch(() => undefined);
    await transport?.close();
  });
  const node = await startRabbitNode(t, { name, conf: `max_message_size = ${maxMessageBytes}\n` });
  const stateDir = await mkdtemp(join(tmpdir(), `cloudlet-${name}-`));
  t.after(() => rm(stateDir, { recursive: true, force: true }));
  const memory = memoryDestination();
  transport = new AmqpAgentTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: node.url, prefix: name, heartbeatMs: 500 }),
    hostId: 'h1',
    maxMessageBytes: 1024 * 1024,
    stateDir,
    log: createLogger({ level: 'info', format: 'json', destination: memory.stream }),
    identity: { version: 'test', plugins: [], startedAt: Date.now() },
  });
  connection = await amqplib.connect(node.url);
  const channel = await connection.createChannel();
  const logged = () => memory.lines().map((line) => String(line.msg));
  return { transport, channel, names: amqpNames(name), logged };
}

test('amqp agent, broker max_message_size 100000 — an oversize event is refused with MESSAGE_TOO_LARGE, without a reconnect; smaller ones go on', { timeout: 120_000 }, async (t) => {
  const { transport, channel, names, logged } = await agentOnLimitedBroker(t, 'large-events', 100_000);
  const { queue } = await channel.assertQueue('', { exclusive: true });
  const events = names.eventsExchange;
  await channel.assertExchange(events, 'topic', { durable: true }); // as the transport declares it
  await channel.bindQueue(queue, events, '#');
  const received: string[] = [];
  await channel.consume(queue, (msg) => msg && received.push(msg.fields.routingKey), { noAck: true });

  const event = (type: string, bytes: number) => makeEvent(type, 'h1', { blob: 'b'.repeat(bytes) });
  // Emitted before the first connection (a plugin's init hook, say): kept, and sent by its setup.
  await transport.publishEvent(event('test.early-large', 80_000));
  await transport.listen(() => undefined);
  // Over 64 KiB, so on the large-message channel, and within the broker's limit: it goes.
  await transport.publishEvent(event('test.large-but-fits', 80_000));
  await assert.rejects(transport.publishEvent(event('test.refused', 120_000)), (error: unknown) => {
    assert.equal((error as { code?: string }).code, 'MESSAGE_TOO_LARGE');
    assert.match(String(error), /the event would be \d+ bytes; the broker refuses messages over 100000 bytes/);
    return true;
  });
  // Known now: refused without being sent. Then the large-message channel is made anew.
  await assert.rejects(transport.publishEvent(event('test.known', 110_000)), { code: 'MESSAGE_TOO_LARGE' });
  await transport.publishEvent(event('test.large-again', 90_000));
  await transport.publishEvent(event('test.small', 10));
  await until(() => received.length >= 4, 10_000);
  assert.deepEqual(received.sort(), ['test.early-large', 'test.large-again', 'test.large-but-fits', 'test.small']);
  assert.equal(transport.isUp(), true);
  const messages = logged();
  assert.ok(!messages.some((msg) => /connecting to the broker again/.test(msg)), `reconnected: ${messages.join(' | ')}`);
  assert.ok(messages.some((msg) => /the broker refuses messages over 100000 bytes \(its max_message_size\)/.test(msg)), 'the operator is told');
});

test('amqp agent, broker max_message_size 250 — when even the MESSAGE_TOO_LARGE reply does not fit, the request is dead-lettered once, not retried forever', { timeout: 120_000 }, async (t) => {
  // A heartbeat (~150 bytes) and the request fit; the reply (100 kB) and its ~330-byte replacement do not.
  const { transport, channel, names, logged: messages } = await agentOnLimitedBroker(t, 'tiny-limit', 250);
  transport.addInboundRoute('direct');
  await transport.listen((delivery) => {
    const request = JSON.parse(String(Buffer.from(delivery.body as Uint8Array))) as RequestEnvelope;
    void delivery.reply(makeReply(request, 'h1', { ok: true, result: 'x'.repeat(100_000) }));
  });
  const { queue: inbox } = await channel.assertQueue('', { exclusive: true });
  const request = makeRequest({ type: 'test.blob', target: 'h1', payload: {} });
  channel.publish(names.directExchange, 'h1', Buffer.from(JSON.stringify(request)), { messageId: request.id, replyTo: inbox, persistent: true });
  await until(() => messages().some((msg) => /not even an error reply fits/.test(msg)), 10_000);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  assert.equal(messages().filter((msg) => /not even an error reply fits/.test(msg)).length, 1, 'given up once');
  assert.ok(messages().length < 50, `the log grew to ${messages().length} lines`);
  const { messageCount } = await channel.checkQueue(names.deadLetter);
  assert.equal(messageCount, 1, 'the request was dead-lettered');
});
