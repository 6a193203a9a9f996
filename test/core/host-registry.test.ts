/** The host registry's memory of what a host took, across a drain and through a view. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { HostRegistry, type Heartbeat } from '../../core/transports/amqp/host-registry.ts';

const beat = (routes: Heartbeat['routes'], view?: Heartbeat['view']): Heartbeat => ({
  v: 1,
  kind: 'heartbeat',
  host: 'h2',
  version: '0.1.0',
  plugins: ['core'],
  routes,
  startedAt: 0,
  sentAt: 0,
  ...(view ? { view } : {}),
});

test('host registry — a draining host (no routes) keeps the routes it took; a newcomer learns them from a view', () => {
  const registry = new HostRegistry(1_000);
  registry.record(beat(['direct', 'broadcast']), 10_000);
  registry.record(beat([]), 11_000); // draining before a graceful stop
  const [entry] = registry.entries(13_000);
  assert.deepEqual([entry?.state, entry?.routes, entry?.tookRoutes], ['down', [], ['direct', 'broadcast']]);

  const newcomer = new HostRegistry(1_000);
  newcomer.record({ ...beat(['direct'], registry.view(13_000)), host: 'h1' }, 13_000);
  const learned = newcomer.entries(13_000).find((e) => e.host === 'h2');
  assert.deepEqual([learned?.state, learned?.routes, learned?.tookRoutes], ['down', [], ['direct', 'broadcast']]);

  // From an older agent's view, without tookRoutes: what it says it takes, or what was known before.
  const older = new HostRegistry(1_000);
  older.record({ ...beat(['direct'], [{ host: 'h2', agoMs: 0, routes: ['broadcast'] }]), host: 'h1' }, 20_000);
  older.record({ ...beat(['direct'], [{ host: 'h2', agoMs: 0, routes: [] }]), host: 'h1' }, 21_000);
  assert.deepEqual(older.entries(21_000).find((e) => e.host === 'h2')?.tookRoutes, ['broadcast']);
});
