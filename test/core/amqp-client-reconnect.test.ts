/**
 * The RabbitMQ client re-publishes waiting requests after it reconnects. An any-host request a host has
 * already accepted must then go to that host (which answers from the running request), not back to the
 * competing queue, where RabbitMQ may hand it to another host that runs it a second time.
 * Only the client's connection is cut (it goes through a relay of the test's own); the agents stay
 * connected to the shared broker, under a prefix of the test's own.
 */
import assert from 'node:assert/strict';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import test, { type TestContext } from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeRequest } from '../../core/envelope.ts';
import { silentLogger } from '../../core/logger.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { SHARED_BROKER, startCloud } from '../support/cloud.ts';

/**
 * A TCP relay to the shared broker. `cutAfter(texts)`: the next time all of `texts` have passed from the
 * broker to a client, that read is forwarded and then the connection is closed (later connections are
 * relayed as usual). `cuts` counts the connections closed so.
 */
async function brokerRelay(t: TestContext) {
  const broker = new URL(SHARED_BROKER);
  const sockets = new Set<Socket>();
  let cut: string[] | undefined;
  let cuts = 0;
  const server = createServer((client) => {
    const upstream = createConnection(Number(broker.port || 5672), broker.hostname);
    sockets.add(client).add(upstream);
    let recent = ''; // the text may straddle two reads
    upstream.on('data', (chunk: Buffer) => {
      recent = (recent + chunk.toString('latin1')).slice(-4096);
      const cutNow = cut !== undefined && cut.every((text) => recent.includes(text));
      if (cutNow) cut = undefined;
      // Flushed first: the client gets what triggered the cut before its connection ends.
      client.write(chunk, () => {
        if (!cutNow) return;
        cuts++;
        client.destroy();
        upstream.destroy();
      });
    });
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const socket of [client, upstream]) socket.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  const url = new URL(SHARED_BROKER);
  url.port = String((server.address() as AddressInfo).port);
  return {
    url: url.toString(),
    cutAfter: (texts: string[]) => {
      cut = texts;
    },
    cuts: () => cuts,
  };
}

function clientThrough(url: string, prefix: string): AmqpClientTransport {
  return new AmqpClientTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url, prefix, heartbeatMs: 300, downAfterMs: 1200 }),
    maxMessageBytes: 1024 * 1024,
    log: silentLogger(),
    inactivityTimeoutMs: 20_000,
  });
}

test('amqp client — an any-host request accepted before the client reconnects runs on that host only, and is answered once', { timeout: 90_000 }, async (t) => {
  let client: AmqpClientTransport | undefined;
  // Registered before the cloud's own clean-up (hooks run in order): the client closes before the topology is deleted.
  t.after(() => client?.close());
  const relay = await brokerRelay(t);
  const cloud = await startCloud(t, [{ id: 'h1' }, { id: 'h2' }]);
  client = clientThrough(relay.url, cloud.prefix);
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} })); // connected; both hosts known

  const request = makeRequest({ type: 'test.sleep', payload: { ms: 4_000, announce: true } });
  // The client's connection ends right after the broker handed it the host's "accepted".
  relay.cutAfter([request.id, '"stage":"accepted"']);
  const reply = await client.request(request);
  assert.equal(relay.cuts(), 1, 'the client lost its connection once, after "accepted"');

  assert.equal(reply.ok, true, JSON.stringify(reply));
  assert.deepEqual(reply.result, { slept: 4_000 });
  const runs = (host: string) =>
    cloud.agents
      .get(host)!
      .output()
      .split('\n')
      .filter((line) => line.includes(request.id) && line.includes('"msg":"sleeping"')).length;
  // A second run would have started at the re-publish, seconds before the first one answered.
  assert.deepEqual({ h1: runs('h1'), h2: runs('h2') }, reply.host === 'h1' ? { h1: 1, h2: 0 } : { h1: 0, h2: 1 });
});

test('amqp client — an accepted any-host request whose host has no queue of its own goes back to the any-host queue after a reconnect', { timeout: 60_000 }, async (t) => {
  let client: AmqpClientTransport | undefined;
  let standIn: amqplib.ChannelModel | undefined;
  t.after(async () => {
    await client?.close();
    await standIn?.close().catch(() => undefined);
  });
  const relay = await brokerRelay(t);
  const cloud = await startCloud(t, []);
  const names = amqpNames(cloud.prefix);
  // A host that takes any-host requests only: it accepts the first copy and keeps it, and answers a later one.
  standIn = await amqplib.connect(cloud.url);
  const channel = await standIn.createChannel();
  await channel.assertQueue(names.anyQueue, { durable: true, arguments: { 'x-dead-letter-exchange': names.deadLetter } });
  let copies = 0;
  await channel.consume(names.anyQueue, (msg) => {
    if (!msg) return;
    const request = JSON.parse(msg.content.toString('utf8')) as { id: string; type: string };
    const envelope =
      ++copies === 1
        ? { v: 1, kind: 'progress', id: request.id, type: request.type, host: 'anyonly', stage: 'accepted', detail: { route: 'any' } }
        : { v: 1, kind: 'reply', id: request.id, type: request.type, host: 'anyonly', ok: true, result: { copy: copies } };
    channel.sendToQueue(msg.properties.replyTo as string, Buffer.from(JSON.stringify(envelope)), { correlationId: msg.properties.correlationId });
  });
  client = clientThrough(relay.url, cloud.prefix);
  const request = makeRequest({ type: 'test.echo', payload: {} });
  relay.cutAfter([request.id, '"stage":"accepted"']);
  const reply = await client.request(request);
  assert.equal(relay.cuts(), 1);
  assert.deepEqual({ ok: reply.ok, host: reply.host, result: reply.result }, { ok: true, host: 'anyonly', result: { copy: 2 } });
});
