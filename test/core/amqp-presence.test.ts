/**
 * The RabbitMQ agent transport announces itself as its connection comes up, with a heartbeat, so others
 * see it at once rather than a heartbeat interval later. In process, against the shared broker.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { createLogger } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';

test('amqp agent — on connecting it sends a heartbeat at once, not a heartbeat interval later', { timeout: 30_000 }, async (t) => {
  const prefix = `cloudlet-test-presence-${randomUUID().slice(0, 8)}`;
  const stateDir = mkdtempSync(join(tmpdir(), 'cloudlet-presence-'));
  let transport: AmqpAgentTransport | undefined;
  const connection = await amqplib.connect(SHARED_BROKER);
  t.after(async () => {
    await connection.close().catch(() => undefined);
    await transport?.close();
    await deletePrefix(SHARED_BROKER, prefix, ['h1']);
    rmSync(stateDir, { recursive: true, force: true });
  });
  // Listening on the presence exchange before the agent connects.
  const channel = await connection.createChannel();
  const exchange = amqpNames(prefix).presenceExchange;
  await channel.assertExchange(exchange, 'fanout', { durable: true });
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(queue, exchange, '');
  const seen: { kind: string; at: number }[] = [];
  await channel.consume(queue, (msg) => msg && seen.push({ kind: (JSON.parse(msg.content.toString('utf8')) as { kind: string }).kind, at: Date.now() }), { noAck: true });

  transport = new AmqpAgentTransport({
    // A heartbeat interval far longer than the test waits: only the announcement can be seen.
    config: amqpTransportSchema.parse({ kind: 'amqp', url: SHARED_BROKER, prefix, heartbeatMs: 60_000, downAfterMs: 180_000 }),
    hostId: 'h1',
    maxMessageBytes: 1024 * 1024,
    stateDir,
    log: createLogger({ level: 'silent', format: 'json' }),
    identity: { version: 'test', plugins: [], startedAt: Date.now() },
  });
  transport.addInboundRoute('direct');
  await transport.listen(() => undefined);
  const listening = Date.now();
  const deadline = listening + 3_000;
  while (!seen.some((m) => m.kind === 'heartbeat') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(
    seen.map((m) => m.kind),
    ['heartbeat'],
    `within 3 s of connecting (heartbeatMs 60000) the agent announced itself, and sent no probe (the others' heartbeats tell it who is alive); seen: ${JSON.stringify(seen)}`,
  );
});
