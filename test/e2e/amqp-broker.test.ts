import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import test from 'node:test';
import { makeRequest } from '../../core/envelope.ts';
import { CloudletError } from '../../core/errors.ts';
import { silentLogger } from '../../core/logger.ts';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { runCli, tempDir, writeConfig } from '../helpers.ts';
import { startCloud } from '../support/cloud.ts';
import { startRabbitNode } from '../support/rabbit-node.ts';

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('broker — credentials in the URL never reach the logs', async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  await cloud.client().request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  const output = cloud.agents.get('h1')!.output();
  assert.match(output, /amqp:\/\/guest:\*\*\*@127\.0\.0\.1/);
  assert.doesNotMatch(output, /guest:guest/);
});

test('broker — no broker at the URL: the agent exits with BROKER_UNAVAILABLE, the CLI with a clear error', async (t) => {
  const dir = await tempDir(t);
  const port = await closedPort();
  const config = await writeConfig(
    dir,
    'nobroker.yaml',
    `host:\n  id: lonely\ntransport:\n  kind: amqp\n  url: amqp://guest:secret@127.0.0.1:${port}\n  prefix: nobroker\nstate:\n  dir: ${dir}/state\nplugins:\n  - use: routing-direct\n`,
  );
  const agent = await runCli(['agent', '--config', config], { timeoutMs: 30_000, env: { CLOUDLET_LOG_FORMAT: 'json' } });
  assert.equal(agent.code, 1);
  assert.match(agent.stdout, /BROKER_UNAVAILABLE/);
  assert.doesNotMatch(agent.stdout + agent.stderr, /secret/);
  const call = await runCli(['call', 'host-info', '--config', config, '--host', 'lonely']);
  // 4, as for an unreachable local agent: nothing answered, so not 1 ("an agent answered with an error").
  assert.equal(call.code, 4);
  assert.match(call.stderr, /BROKER_UNAVAILABLE/);
});

test('broker — while the broker is down a caller gets BROKER_UNAVAILABLE by its deadline, and the agent recovers', async (t) => {
  const node = await startRabbitNode(t);
  const cloud = await startCloud(t, [{ id: 'h1' }], { url: node.url });
  const client = cloud.client();
  assert.equal((await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }))).ok, true);
  await node.stop();
  const started = performance.now();
  await assert.rejects(
    client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: Date.now() + 1_500 })),
    (error: CloudletError) => error.code === 'BROKER_UNAVAILABLE',
  );
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 1_000 && elapsed < 6_000, `answered after ${elapsed} ms`);
  await node.start();
  // Both sides reconnect by themselves and the same client works again.
  const deadline = Date.now() + 30_000;
  let reply;
  while (!reply) {
    reply = await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 'back' }, deadline: Date.now() + 5_000 })).catch((error: CloudletError) => {
      assert.ok(Date.now() < deadline, `not recovered: ${error.code} ${error.message}`);
      return undefined;
    });
  }
  assert.equal(reply.ok, true);
  assert.equal(cloud.agents.get('h1')!.child.exitCode, null, 'the agent survived the outage');
});

test('broker — a client with no broker fails fast with BROKER_UNAVAILABLE', async (t) => {
  const port = await closedPort();
  const client = new AmqpClientTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: `amqp://guest:guest@127.0.0.1:${port}`, prefix: 'x', prefetch: 1, heartbeatMs: 1000, downAfterMs: 3000, outcomeHistory: 100 }),
    maxMessageBytes: 1 << 20,
    log: silentLogger(),
  });
  t.after(() => client.close());
  const started = performance.now();
  await assert.rejects(client.request(makeRequest({ type: 'host-info', target: 'h', payload: {} })), (error: CloudletError) => error.code === 'BROKER_UNAVAILABLE');
  assert.ok(performance.now() - started < 5_000);
});
