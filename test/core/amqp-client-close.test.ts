/**
 * A closed RabbitMQ client sends nothing and waits for nothing: a call made after close(), and one that was
 * still waiting for the broker when close() came, fail with CANCELLED at once, as the requests close()
 * finds pending do. Before, both waited for a connection that never came back, up to their deadline (30 s
 * by default, keeping the process alive that long), and then failed with BROKER_UNAVAILABLE. A call with
 * the id of one still waiting is refused (replies are matched by id).
 */
import assert from 'node:assert/strict';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import test, { type TestContext } from 'node:test';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeRequest } from '../../core/envelope.ts';
import { CloudletError } from '../../core/errors.ts';
import { silentLogger } from '../../core/logger.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { SHARED_BROKER, startCloud } from '../support/cloud.ts';

const closedClient = (error: unknown) => {
  assert.ok(error instanceof CloudletError, `expected a CloudletError, got ${String(error)}`);
  assert.equal(error.code, 'CANCELLED', error.message);
  assert.match(error.message, /client was closed/);
  return true;
};

test('amqp client — every call made after close() fails at once with CANCELLED, and nothing connects again', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 20_000 });
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  await client.close();
  await assert.rejects(client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} })), closedClient);
  await assert.rejects(client.request(makeRequest({ type: 'test.echo', payload: {} })), closedClient);
  await assert.rejects(client.gather(makeRequest({ type: 'host-info', deadline: Date.now() + 10_000 })), closedClient);
  await assert.rejects(client.subscribe(() => undefined), closedClient);
  await assert.rejects(client.hosts(), closedClient);

  // A client closed before it ever connected does not connect for a later call either.
  const neverUsed = cloud.client({ inactivityTimeoutMs: 20_000 });
  await neverUsed.close();
  await assert.rejects(neverUsed.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} })), closedClient);
});

/** A TCP relay to the shared broker that `cut()` ends for good: open connections drop, new ones are refused. */
async function cuttableRelay(t: TestContext) {
  const broker = new URL(SHARED_BROKER);
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = createConnection(Number(broker.port || 5672), broker.hostname);
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) socket.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const cut = async () => {
    const closed = new Promise((resolve) => server.close(resolve));
    for (const socket of sockets) socket.destroy();
    await closed;
  };
  t.after(cut);
  const url = new URL(SHARED_BROKER);
  url.port = String((server.address() as AddressInfo).port);
  return { url: url.toString(), cut };
}

test('amqp client — close() ends a call that waits for the broker to come back, with CANCELLED', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const relay = await cuttableRelay(t);
  const client = new AmqpClientTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: relay.url, prefix: cloud.prefix, heartbeatMs: 300, downAfterMs: 1200 }),
    maxMessageBytes: 1 << 20,
    log: silentLogger(),
    inactivityTimeoutMs: 20_000,
  });
  t.after(() => client.close());
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  await relay.cut();
  await new Promise((resolve) => setTimeout(resolve, 300)); // the client has seen its connection drop
  let settled = false;
  const waiting = client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} })).finally(() => (settled = true));
  const gathering = client.gather(makeRequest({ type: 'host-info', deadline: Date.now() + 20_000 }));
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(settled, false, 'the request waits for the broker (else this test proves nothing)');
  await client.close();
  await assert.rejects(waiting, closedClient);
  await assert.rejects(gathering, closedClient);
});

test('amqp client — a second call with the id of one still waiting on this client is refused with DUPLICATE_ID; the first is answered', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 20_000 });
  const request = makeRequest({ type: 'test.sleep', target: 'h1', payload: { ms: 500 } });
  const first = client.request(request);
  // Before, the second took the first's place among the calls waiting for replies (matched by id): the
  // first caller never heard back and failed with CLIENT_TIMEOUT.
  await assert.rejects(client.request(makeRequest({ id: request.id, type: 'test.echo', target: 'h1', payload: {} })), { code: 'DUPLICATE_ID' });
  await assert.rejects(client.gather(makeRequest({ id: request.id, type: 'host-info', deadline: Date.now() + 10_000 })), { code: 'DUPLICATE_ID' });
  assert.equal((await first).ok, true);
  assert.equal((await client.request(makeRequest({ id: request.id, type: 'test.echo', target: 'h1', payload: {} }))).ok, true, 'once answered, the id may be sent again');
});
