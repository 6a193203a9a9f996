/**
 * The RabbitMQ agent transport announces itself as its connection comes up, with a heartbeat, so others
 * see it at once rather than a heartbeat interval later; a client polling `hosts()` sees what arrived meanwhile.
 * In process, against the shared broker.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { createLogger } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
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

test('amqp client — hosts() polled in a loop lets in the heartbeats that arrive meanwhile (it does not starve the event loop)', { timeout: 30_000 }, async (t) => {
  // Found by a CI run of the bench smoke: `while (fewer than N live) await client.hosts(200)` never ended.
  // Once presence was known and every host heard directly, hosts() resolved with no timer and no I/O, so the
  // loop ran as microtasks only and the socket carrying the awaited heartbeat was never read.
  const prefix = `cloudlet-test-presence-${randomUUID().slice(0, 8)}`;
  const names = amqpNames(prefix);
  const client = new AmqpClientTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: SHARED_BROKER, prefix, heartbeatMs: 60_000, downAfterMs: 180_000 }),
    maxMessageBytes: 1024 * 1024,
    log: createLogger({ level: 'silent', format: 'json' }),
  });
  const connection = await amqplib.connect(SHARED_BROKER);
  t.after(async () => {
    await client.close();
    await connection.close().catch(() => undefined);
    await deletePrefix(SHARED_BROKER, prefix, []);
  });
  const channel = await connection.createConfirmChannel();
  await channel.assertExchange(names.presenceExchange, 'fanout', { durable: true });
  const announce = async (host: string, view?: []) => {
    const now = Date.now();
    const heartbeat = { v: 1, kind: 'heartbeat', host, version: 'test', plugins: [], routes: ['broadcast'], startedAt: now, sentAt: now, ...(view ? { view } : {}) };
    channel.publish(names.presenceExchange, '', Buffer.from(JSON.stringify(heartbeat)));
    await channel.waitForConfirms(); // at the broker, on its way to the client
  };
  const knows = (host: string) => client.registry.liveHosts('broadcast').includes(host);

  await client.hosts(0); // connected, its presence queue bound
  await announce('h1', []); // an answer to its probe (with a view): presence is known from now on
  for (const deadline = Date.now() + 5_000; !knows('h1') && Date.now() < deadline; ) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.ok(knows('h1'), 'the client heard h1 (set-up)');

  await announce('h2');
  // The loop under test: it waits only through hosts(). Bounded by the clock, since a loop that never
  // yields would also keep any timer from firing.
  let calls = 0;
  for (const deadline = Date.now() + 3_000; !knows('h2') && Date.now() < deadline; calls++) await client.hosts(200);
  assert.ok(knows('h2'), `a loop over hosts() saw h2's heartbeat, already at the broker, within 3 s (${calls} calls); it saw ${JSON.stringify(client.registry.liveHosts())}`);
});
