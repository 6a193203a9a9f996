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

const hosts = (registry: HostRegistry, now: number) => registry.entries(now).map((e) => `${e.host}:${e.state}`);

test('host registry — a forgotten host is dropped, and a view from before the forget does not bring it back', () => {
  const registry = new HostRegistry(1_000);
  registry.record({ ...beat(['direct']), host: 'h1' }, 10_000);
  registry.record(beat(['direct']), 10_000); // h2, then silent
  assert.deepEqual(hosts(registry, 20_000), ['h1:down', 'h2:down']);
  assert.equal(registry.forget('h2', 20_000), true);
  assert.equal(registry.forget('nobody', 20_000), false);
  assert.deepEqual(hosts(registry, 20_000), ['h1:down']);
  // h3 missed the forget: its answer to a probe still names h2, as heard at 10 s. Not back.
  registry.record({ ...beat(['direct'], [{ host: 'h2', agoMs: 11_000, routes: ['direct'] }]), host: 'h3' }, 21_000);
  assert.deepEqual(hosts(registry, 21_000), ['h1:down', 'h3:up']);
  // h2 itself comes back: known again, and a later forget of an earlier moment does not drop it.
  registry.record(beat(['direct']), 22_000);
  assert.deepEqual(hosts(registry, 22_000), ['h1:down', 'h2:up', 'h3:up']);
  assert.equal(registry.forget('h2', 21_500), false);
  assert.deepEqual(hosts(registry, 22_000), ['h1:down', 'h2:up', 'h3:up']);
});

test('host registry — a participant that missed a forget learns it from any view, whichever answer comes first', () => {
  const told = new HostRegistry(1_000);
  told.record(beat(['direct']), 10_000);
  told.forget('h2', 20_000);
  const answer = { ...beat(['direct'], told.view(25_000)), host: 'h1', forgotten: told.forgottenView(25_000) };
  assert.deepEqual(answer.forgotten, [{ host: 'h2', agoMs: 5_000 }]);
  const stale = { ...beat(['direct'], [{ host: 'h2', agoMs: 15_000, routes: ['direct'] as Heartbeat['routes'] }]), host: 'h3' };
  // An agent whose connection was down at the forget: it still knows h2, and forgets it at the next answer.
  const missed = new HostRegistry(1_000);
  missed.record(beat(['direct']), 10_000);
  missed.record(answer, 25_000);
  assert.deepEqual(hosts(missed, 25_000), ['h1:up']);
  // A new client hears the stale view and the told one, in either order: h2 is not listed.
  for (const order of [[stale, answer], [answer, stale]]) {
    const client = new HostRegistry(1_000);
    for (const heartbeat of order) client.record(heartbeat, 25_000);
    assert.deepEqual(hosts(client, 25_000), ['h1:up', 'h3:up'], order.map((h) => h.host).join(' then '));
  }
  // The forget spreads with the view, so the new client passes it on in turn.
  const client = new HostRegistry(1_000);
  client.record(answer, 25_000);
  assert.deepEqual(client.forgottenView(26_000), [{ host: 'h2', agoMs: 6_000 }]);
});

test('host registry — a participant whose connection was down when a host was forgotten still drops it, though it forgave the silence', () => {
  // From a review: forgiveSilence moved the host's last seen past the forget, so the forget was ignored and
  // this participant's views (agoMs ≈ 0) brought the host back everywhere.
  const away = new HostRegistry(1_000);
  away.record(beat(['direct']), 10_000); // h2, live
  away.noteOutage(10_500); // our connection drops: h2 was live then
  away.forgiveSilence(30_000); // back: h2 gets a fresh downAfterMs
  assert.deepEqual(hosts(away, 30_000), ['h2:up']);
  assert.deepEqual(away.view(30_000).map((v) => [v.host, v.agoMs]), [['h2', 20_000]], 'a view tells when h2 was really heard');
  const told = new HostRegistry(1_000);
  told.record(beat(['direct']), 10_000);
  told.forget('h2', 20_000); // forgotten while `away` was disconnected
  away.record({ ...beat(['direct'], told.view(30_000)), host: 'h1', forgotten: told.forgottenView(30_000) }, 30_000);
  assert.deepEqual(hosts(away, 30_000), ['h1:up']);
  // And a newcomer hearing a forgiving participant's view and a told one's, in either order, lists no h2.
  const forgiving = new HostRegistry(1_000);
  forgiving.record(beat(['direct']), 10_000);
  forgiving.noteOutage(10_500);
  forgiving.forgiveSilence(30_000);
  const stale = { ...beat(['direct'], forgiving.view(30_000)), host: 'h3' };
  const answer = { ...beat(['direct'], told.view(30_000)), host: 'h1', forgotten: told.forgottenView(30_000) };
  for (const order of [[stale, answer], [answer, stale]]) {
    const client = new HostRegistry(1_000);
    for (const heartbeat of order) client.record(heartbeat, 30_000);
    assert.deepEqual(hosts(client, 30_000), ['h1:up', 'h3:up'], order.map((h) => h.host).join(' then '));
  }
});

test('host registry — a host whose last heartbeat said it stopped is marked so, stays live for routing until downAfterMs, and is passed on in views until it is heard again', () => {
  const registry = new HostRegistry(1_000);
  registry.record(beat(['direct']), 10_000);
  registry.record({ ...beat([]), stopped: true }, 10_100);
  const [entry] = registry.entries(10_200);
  // Live for routing: requests sent during a restart wait in its queue for the new agent.
  assert.deepEqual([entry?.state, entry?.stopped, entry?.tookRoutes, registry.isLive('h2', 10_200)], ['up', true, ['direct'], true]);
  assert.equal(registry.entries(12_000)[0]?.state, 'down');

  const newcomer = new HostRegistry(1_000);
  newcomer.record({ ...beat(['direct'], registry.view(10_300)), host: 'h1' }, 10_300);
  assert.equal(newcomer.entries(10_300).find((e) => e.host === 'h2')?.stopped, true);

  // Heard again (its agent started): no longer stopped, directly or through a newer view.
  registry.record(beat(['direct']), 11_000);
  assert.equal(registry.entries(11_000)[0]?.stopped, undefined);
  newcomer.record({ ...beat(['direct'], registry.view(11_100)), host: 'h1' }, 11_100);
  assert.equal(newcomer.entries(11_100).find((e) => e.host === 'h2')?.stopped, undefined);
});
