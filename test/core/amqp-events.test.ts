/**
 * Events on RabbitMQ: those emitted before the agent has connected (its plugins' init and start hooks run
 * first) are kept and published once it connects, not lost and not an error (PROTOCOL.md 11.12).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'node:test';
import { Agent } from '../../core/agent.ts';
import { loadHostConfig } from '../../core/config/host-config.ts';
import { rawConfigFrom } from '../../core/config/load.ts';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { createLogger, memoryDestination, silentLogger } from '../../core/logger.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { tempDir, until } from '../helpers.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';

const emitsOnStart = fileURLToPath(new URL('../fixtures/plugins/emits-on-start/index.ts', import.meta.url));

test('amqp events — events emitted by init and start hooks, before the agent connects, reach a subscriber once it has', { timeout: 60_000 }, async (t) => {
  const prefix = `t-${randomUUID().slice(0, 8)}`;
  const dir = await tempDir(t);
  const transport = { kind: 'amqp', url: SHARED_BROKER, prefix, heartbeatMs: 300, downAfterMs: 1200 };
  t.after(() => deletePrefix(SHARED_BROKER, prefix, ['h1']));

  const client = new AmqpClientTransport({ config: amqpTransportSchema.parse(transport), maxMessageBytes: 1 << 20, log: silentLogger() });
  t.after(() => client.close());
  const received: { type: string; host: string; payload: unknown }[] = [];
  const unsubscribe = await client.subscribe((event) => received.push({ type: event.type, host: event.host, payload: event.payload }));
  t.after(() => unsubscribe());

  const config = await loadHostConfig(
    rawConfigFrom({ host: { id: 'h1' }, transport, state: { dir: join(dir, 'state') }, plugins: [{ use: emitsOnStart }] }, join(dir, 'cloudlet.yaml')),
  );
  const agent = new Agent(config, { logger: createLogger({ level: 'fatal', format: 'json', destination: memoryDestination().stream }) });
  t.after(() => agent.stop('test finished'));
  await agent.start(); // a hook whose emitEvent threw would fail the start

  await until(() => received.length >= 2, 15_000);
  assert.deepEqual(received, [
    { type: 'test.init-hook', host: 'h1', payload: { at: 'init' } },
    { type: 'test.start-hook', host: 'h1', payload: { at: 'start' } },
  ]);
});
