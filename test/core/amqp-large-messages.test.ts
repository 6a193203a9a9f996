/**
 * Events over a broker's max_message_size, from the agent transport in process: the first is refused on
 * the large-message channel (no reconnect), later ones are refused before they are sent, and events within
 * the limit go on. Replies are tested end to end in test/e2e/amqp-faults.test.ts ('broker limits').
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeEvent } from '../../core/envelope.ts';
import { createLogger, memoryDestination } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { until } from '../helpers.ts';
import { startRabbitNode } from '../support/rabbit-node.ts';

test('amqp agent, broker max_message_size 100000 — an oversize event is refused with MESSAGE_TOO_LARGE, without a reconnect; smaller ones go on', { timeout: 120_000 }, async (t) => {
  let transport: AmqpAgentTransport | undefined;
  let connection: amqplib.ChannelModel | undefined;
  // Registered before the node's own cleanup (hooks run in order): both close while the broker is up.
  t.after(async () => {
    await connection?.close().catch(() => undefined);
    await transport?.close();
  });
  const node = await startRabbitNode(t, { name: 'event-size', conf: 'max_message_size = 100000\n' });
  const stateDir = await mkdtemp(join(tmpdir(), 'cloudlet-large-events-'));
  t.after(() => rm(stateDir, { recursive: true, force: true }));
  const memory = memoryDestination();
  const prefix = 'large-events';
  transport = new AmqpAgentTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: node.url, prefix, heartbeatMs: 500 }),
    hostId: 'h1',
    maxMessageBytes: 1024 * 1024,
    stateDir,
    log: createLogger({ level: 'info', format: 'json', destination: memory.stream }),
    identity: { version: 'test', plugins: [], startedAt: Date.now() },
  });
  await transport.listen(() => undefined);

  connection = await amqplib.connect(node.url);
  const channel = await connection.createChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(queue, amqpNames(prefix).eventsExchange, '#');
  const received: string[] = [];
  await channel.consume(queue, (msg) => msg && received.push(msg.fields.routingKey), { noAck: true });

  const event = (type: string, bytes: number) => makeEvent(type, 'h1', { blob: 'b'.repeat(bytes) });
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
  await until(() => received.length >= 3, 10_000);
  assert.deepEqual(received.sort(), ['test.large-again', 'test.large-but-fits', 'test.small']);
  assert.equal(transport.isUp(), true);
  const messages = memory.lines().map((line) => String(line.msg));
  assert.ok(!messages.some((msg) => /connecting to the broker again/.test(msg)), `reconnected: ${messages.join(' | ')}`);
  assert.ok(messages.some((msg) => /the broker refuses messages over 100000 bytes \(its max_message_size\)/.test(msg)), 'the operator is told');
});
