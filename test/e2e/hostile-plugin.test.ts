import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import test from 'node:test';
import { makeRequest } from '../../core/envelope.ts';
import { testkitPath } from '../helpers.ts';
import { startCloud } from '../support/cloud.ts';
import { startAgent } from '../helpers.ts';

const hostile = fileURLToPath(new URL('../fixtures/plugins/hostile/index.ts', import.meta.url));

test('plugin trust — a hostile plugin cannot take the agent down: CPU hog, memory hog, exit, late throw, progress flood', async (t) => {
  const { client, agent } = await startAgent(t, { plugins: [{ use: testkitPath }, { use: hostile }] });
  const call = (type: string) => client.request(makeRequest({ type, payload: {} }));
  const outcomes = await Promise.all(['hostile.spin', 'hostile.eat-memory', 'hostile.exit', 'hostile.throw-later', 'hostile.flood-progress'].map(call));
  assert.deepEqual(
    outcomes.map((r) => r.error?.code ?? 'ok'),
    ['TIMEOUT', 'WORKER_CRASHED', 'WORKER_CRASHED', 'WORKER_CRASHED', 'ok'],
  );
  // Invalid progress stages (100 characters) were dropped, not sent; the agent still serves everything.
  const echo = await client.request(makeRequest({ type: 'test.echo', payload: { value: 'still here' } }));
  assert.equal(echo.ok, true);
  assert.equal(agent.inFlight, 0);
  const again = await call('hostile.eat-memory');
  assert.equal(again.error?.code, 'WORKER_CRASHED');
});

test('plugin trust — on RabbitMQ too, the host keeps answering after its hostile handlers misbehave', async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }], {});
  // The cloud helper loads testkit only: prove the same through the broker with testkit's own crashers.
  const client = cloud.client();
  for (const type of ['test.crash', 'test.exit']) {
    const reply = await client.request(makeRequest({ type, target: 'h1', payload: {} }));
    assert.equal(reply.error?.code, 'WORKER_CRASHED');
  }
  const echo = await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  assert.equal(echo.ok, true);
  assert.equal(cloud.agents.get('h1')!.child.exitCode, null);
});
