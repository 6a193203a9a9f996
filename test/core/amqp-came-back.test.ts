/**
 * The RabbitMQ agent transport with an any-host request that came back to a host that refused it before
 * (its name is in x-cloudlet-refused-by): the host pauses before it runs it again (PROTOCOL.md 11.6). An
 * agent that begins to stop during that pause puts the request back in the queue unrun, for another host.
 * In process, against the shared broker: the pause is 250 ms, too short to hit from outside an agent
 * process, so the stop is started from the log line that says the pause began.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeRequest } from '../../core/envelope.ts';
import { createLogger } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { amqpNames, HEADERS } from '../../core/transports/amqp/names.ts';
import { until } from '../helpers.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';

const PAUSE_BEGAN = 'any-host request came back to this host';

test('amqp agent, came back — an agent that begins to stop while a came-back request pauses puts it back in the queue unrun', { timeout: 60_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'cloudlet-came-back-'));
  const prefix = `cloudlet-test-came-back-${randomUUID().slice(0, 8)}`;
  const names = amqpNames(prefix);
  let transport: AmqpAgentTransport | undefined;
  let connection: amqplib.ChannelModel | undefined;
  t.after(async () => {
    const steps = [() => connection?.close(), () => transport?.close(), () => deletePrefix(SHARED_BROKER, prefix, ['h1']), () => rmSync(stateDir, { recursive: true, force: true })];
    for (const step of steps) await Promise.resolve().then(step).catch((error: unknown) => console.error('cleanup:', error));
  });

  // The stop begins in the same turn as the pause's log line: well inside the 250 ms however loaded the box.
  let stopping: Promise<void> | undefined;
  const destination = new Writable({
    write(chunk, _encoding, callback) {
      if (String(chunk).includes(PAUSE_BEGAN) && !stopping) stopping = transport?.stopAccepting();
      callback();
    },
  });
  transport = new AmqpAgentTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: SHARED_BROKER, prefix, heartbeatMs: 500 }),
    hostId: 'h1',
    maxMessageBytes: 1024 * 1024,
    stateDir,
    log: createLogger({ level: 'debug', format: 'json', destination }),
    identity: { version: 'test', plugins: [], startedAt: Date.now() },
  });
  transport.addInboundRoute('any'); // as routing-direct does with acceptAny
  const handled: string[] = [];
  await transport.listen((delivery) => {
    const request = JSON.parse(String(Buffer.from(delivery.body as Uint8Array))) as { id: string };
    handled.push(request.id);
  });

  connection = await amqplib.connect(SHARED_BROKER);
  const channel = await connection.createChannel();
  const { queue: replyTo } = await channel.assertQueue('', { exclusive: true });
  // As a host that handed it on sends it: h1 refused it once already.
  const request = makeRequest({ type: 'test.echo', payload: {}, deadline: Date.now() + 30_000 });
  channel.sendToQueue(names.anyQueue, Buffer.from(JSON.stringify(request)), {
    messageId: request.id,
    replyTo,
    type: request.type,
    persistent: true,
    contentType: 'application/json',
    headers: { [HEADERS.refusedBy]: JSON.stringify(['h1']), [HEADERS.route]: 'any' },
  });
  await until(() => stopping !== undefined, 10_000, 'h1 pauses the came-back request');
  await stopping;

  // Back in the queue, ready: after its pause h1 gave it back (an unacked one would only return when h1's
  // channel closes, and the transport stays open here).
  const back: { message?: amqplib.GetMessage } = {};
  await until(async () => (back.message = (await channel.get(names.anyQueue, { noAck: false })) || undefined) !== undefined, 10_000, 'the request is back in the any-host queue');
  const message = back.message!;
  assert.equal(message.properties.messageId, request.id);
  assert.equal(message.fields.redelivered, true, 'h1 had it, and gave it back');
  assert.deepEqual(JSON.parse(String(message.properties.headers?.[HEADERS.refusedBy])), ['h1'], 'with its header as it came');
  channel.ack(message);
  assert.deepEqual(handled, [], 'h1 did not run it');
  assert.equal(await channel.get(replyTo, { noAck: true }), false, 'nor told the caller it took it (no "accepted", no reply)');
});
