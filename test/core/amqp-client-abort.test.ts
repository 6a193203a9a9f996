/**
 * The RabbitMQ client honours an AbortSignal whenever it is aborted: already before the call, while the
 * call still connects, and for gather() as for request(). Each ends with CANCELLED, and a request aborted
 * before it was sent is never sent. Against the shared broker, under a prefix of the test's own.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { makeRequest } from '../../core/envelope.ts';
import { CloudletError } from '../../core/errors.ts';
import { until } from '../helpers.ts';
import { startCloud, type Cloud } from '../support/cloud.ts';

const cancelled = (error: unknown) => {
  assert.ok(error instanceof CloudletError, `expected a CloudletError, got ${String(error)}`);
  assert.equal(error.code, 'CANCELLED', error.message);
  return true;
};

/** How many times a host's handler started the test.sleep (with `announce`) of request `id`. */
const runs = (cloud: Cloud, host: string, id: string) =>
  cloud.agents
    .get(host)!
    .output()
    .split('\n')
    .filter((line) => line.includes(id) && line.includes('"msg":"sleeping"')).length;

test('amqp client — a request with an already aborted signal fails with CANCELLED and is not sent', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 20_000 });
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  const request = makeRequest({ type: 'test.sleep', target: 'h1', payload: { ms: 2_000, announce: true } });
  await assert.rejects(client.request(request, { signal: AbortSignal.abort() }), cancelled);
  // Requests to h1 arrive in order: had the aborted one been sent, h1 would have started it by now.
  await client.request(makeRequest({ type: 'test.sleep', target: 'h1', payload: { ms: 0, announce: true } }));
  assert.equal(runs(cloud, 'h1', request.id), 0);
});

test('amqp client — a request aborted while the client is still connecting fails with CANCELLED', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 20_000 });
  const controller = new AbortController();
  const request = makeRequest({ type: 'test.sleep', target: 'h1', payload: { ms: 2_000, announce: true } });
  const reply = client.request(request, { signal: controller.signal });
  controller.abort(); // the client has not connected yet
  await assert.rejects(reply, cancelled);
  // The client goes on connecting and is usable. (Waiting for it also keeps close() from running while it
  // connects: the connection would outlive it, see BrokerConnection.close.)
  const echo = await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  assert.equal(echo.ok, true);
});

test('amqp client — a gather with an already aborted signal fails with CANCELLED', { timeout: 60_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const client = cloud.client({ inactivityTimeoutMs: 20_000 });
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  await assert.rejects(client.gather(makeRequest({ type: 'host-info', deadline: Date.now() + 10_000 }), { signal: AbortSignal.abort() }), cancelled);
});

test('amqp client — a gather aborted while the hosts work fails with CANCELLED, not waiting for their replies', { timeout: 90_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }, { id: 'h2' }]);
  const client = cloud.client({ inactivityTimeoutMs: 60_000 });
  await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  const controller = new AbortController();
  const request = makeRequest({ type: 'test.sleep', payload: { ms: 20_000, announce: true }, deadline: Date.now() + 60_000 });
  const replies: string[] = [];
  const gathered = client.gather(request, { signal: controller.signal, onReply: (reply) => replies.push(reply.host) });
  await until(() => runs(cloud, 'h1', request.id) + runs(cloud, 'h2', request.id) === 2, 20_000);
  assert.equal(runs(cloud, 'h1', request.id) + runs(cloud, 'h2', request.id), 2, 'both hosts started it');
  controller.abort();
  await assert.rejects(gathered, cancelled);
  assert.deepEqual(replies, [], 'aborted before any host answered');
});
