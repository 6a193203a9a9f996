/**
 * `vm create --request-id` without `--host` on RabbitMQ: where the repeat goes, from what every host said
 * about the request (find-create). The whole path, with two QEMU hosts, is in test/e2e/ops-cli-vm-amqp.test.ts.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { foundElsewhere, hostOfEarlierCreate } from '../../../core/cli/commands/vm-create-find.ts';
import { makeReply, makeRequest, type ReplyEnvelope } from '../../../core/envelope.ts';
import { cloudletError, type CloudletError } from '../../../core/errors.ts';
import type { GatherResult, KnownHost } from '../../../core/transports/transport.ts';

const asked = makeRequest({ type: 'find-create', payload: { request: 'req-1' } });
const said = (host: string, found: string | null, vm?: string): ReplyEnvelope => makeReply(asked, host, { ok: true, result: { host, request: 'req-1', found, ...(vm ? { vm } : {}) } });
const failed = (host: string, code: string, details?: Record<string, unknown>): ReplyEnvelope => makeReply(asked, host, { ok: false, error: cloudletError(code as 'INTERNAL', `${code} on ${host}`, details).toWire() });
const gathered = (replies: ReplyEnvelope[], extra: Partial<GatherResult> = {}): GatherResult => ({ replies, missing: [], ...extra });

test('find-create — nothing anywhere, every host that makes VMs said so: any host (no target)', () => {
  // `plain` runs no qemu-backend: UNKNOWN_TYPE, and create-vm is not among the types it knows.
  const result = hostOfEarlierCreate(gathered([said('h1', null), said('h2', null), failed('plain', 'UNKNOWN_TYPE', { type: 'find-create', known: ['host-info', 'list-vms'] })]), 'req-1');
  assert.deepEqual(result, { found: [] });
});

test('find-create — the host that has the VM, a create at work, a leftover or the deletion; a VM wins over the others', () => {
  for (const found of ['vm', 'creating', 'leftover', 'deleted']) {
    assert.equal(hostOfEarlierCreate(gathered([said('h1', null), said('h2', found, 'h2.abcdefgh')]), 'req-1').host, 'h2', found);
  }
  // A VM or a create at work wins even with a host silent: the request made its VM there.
  const both = hostOfEarlierCreate(gathered([said('h1', 'deleted', 'h1.abcdefgh'), said('h2', 'vm', 'h2.abcdefgh')], { missing: ['h3'] }), 'req-1');
  assert.equal(both.host, 'h2');
  assert.equal(foundElsewhere(both.found, 'h2'), 'warning: request left something on other hosts too: h1 (deleted h1.abcdefgh)');
  assert.equal(foundElsewhere(both.found.filter((f) => f.host === 'h2'), 'h2'), undefined);
  assert.equal(hostOfEarlierCreate(gathered([said('h1', 'creating', 'h1.abcdefgh')], { missing: ['h3'] }), 'req-1').host, 'h1');
  // A deletion before a leftover (a run that died, which a repeat there would start over).
  assert.equal(hostOfEarlierCreate(gathered([said('h1', 'leftover', 'h1.abcdefgh'), said('h2', 'deleted', 'h2.abcdefgh')]), 'req-1').host, 'h2');
});

test('find-create — a create accepted and waiting on a host (no VM id yet): the repeat goes there when every host could say; a VM or a create at work comes first', () => {
  // Before core API 1.11 that host said null, and the repeat could go to any host.
  const waiting = hostOfEarlierCreate(gathered([said('h1', null), said('h2', 'accepted'), said('h3', 'leftover', 'h3.abcdefgh')]), 'req-1');
  assert.equal(waiting.host, 'h2');
  assert.equal(foundElsewhere(waiting.found, 'h2'), 'warning: request left something on other hosts too: h3 (leftover h3.abcdefgh)');
  assert.equal(foundElsewhere(waiting.found, 'h3'), 'warning: request left something on other hosts too: h2 (accepted)');
  assert.equal(hostOfEarlierCreate(gathered([said('h1', 'accepted'), said('h2', 'creating', 'h2.abcdefgh')]), 'req-1').host, 'h2');
  assert.equal(hostOfEarlierCreate(gathered([said('h1', 'accepted'), said('h2', 'deleted', 'h2.abcdefgh')]), 'req-1').host, 'h1');
  // With a host that cannot say, it does not settle it: a create that finds its host full when it starts is
  // handed on, maybe to that host.
  assert.throws(
    () => hostOfEarlierCreate(gathered([said('h1', 'accepted')], { missing: ['h3'] }), 'req-1'),
    (error: CloudletError) => {
      assert.equal(error.code, 'REQUEST_UNRESOLVED');
      assert.match(error.message, /^request req-1 left only a create waiting for its turn on h1, but h3 \(did not answer\) could not say/);
      return true;
    },
  );
  assert.equal(hostOfEarlierCreate(gathered([said('h1', 'accepted'), said('h2', 'vm', 'h2.abcdefgh')], { missing: ['h3'] }), 'req-1').host, 'h2');
});

test('find-create — a deletion or a leftover does not settle it while a host cannot say: the request may have run again there', () => {
  // h1 died mid-create (its leftover); the broker gave the request to h3, which made the VM and is silent now.
  assert.throws(
    () => hostOfEarlierCreate(gathered([said('h1', 'leftover', 'h1.abcdefgh'), said('h2', 'deleted', 'h2.abcdefgh')], { missing: ['h3'] }), 'req-1'),
    (error: CloudletError) => {
      assert.equal(error.code, 'REQUEST_UNRESOLVED');
      assert.match(error.message, /^request req-1 left only a leftover on h1 and a deleted VM on h2, but h3 \(did not answer\) could not say/);
      return true;
    },
  );
});

test('find-create — a host that may have run it and cannot say: REQUEST_UNRESOLVED naming it, not a create sent to any host', () => {
  const cases: [GatherResult, RegExp][] = [
    [gathered([said('h1', null)], { missing: ['h2'] }), /h2 \(did not answer\)/],
    [gathered([said('h1', null)], { down: [{ host: 'h2', agoMs: 9_000 }] }), /h2 \(down\)/],
    [gathered([said('h1', null), failed('h2', 'TIMEOUT')]), /h2 \(TIMEOUT: TIMEOUT on h2\)/],
    [gathered([said('h1', null), failed('h2', 'UNKNOWN_TYPE', { type: 'find-create', known: ['create-vm', 'list-vms'] })]), /h2 \(its agent is older than find-create\)/],
  ];
  cases.push([gathered([said('h1', null)], { missing: ['h2'], untrusted: [{ host: 'h2', reason: 'not signed by its key' }] }), /h2 \(answered, but with no reply this client trusts: not signed by its key\)/]);
  for (const [result, names] of cases) {
    assert.throws(
      () => hostOfEarlierCreate(result, 'req-1'),
      (error: CloudletError) => {
        assert.equal(error.code, 'REQUEST_UNRESOLVED');
        assert.match(error.message, /^request req-1 left nothing on the hosts that answered, but .* could not say whether it ran there: sending it to any host could make a second VM$/);
        assert.match(error.message, names);
        assert.match((error.details as { hint: string }).hint, /give --host/);
        return true;
      },
    );
  }
});

test('find-create — a live host that takes any-host requests but no broadcasts (or drains before it stops) was not asked: it cannot say', () => {
  const host = (name: string, state: 'up' | 'down', routes: KnownHost['routes'], tookRoutes = routes): KnownHost => ({ host: name, state, routes, tookRoutes });
  const answered = gathered([said('h1', null)], { down: [{ host: 'h4', agoMs: 60_000 }] });
  const known = [host('h1', 'up', ['direct', 'any', 'broadcast']), host('h2', 'up', ['direct', 'any']), host('h3', 'up', [], ['direct', 'any', 'broadcast']), host('h4', 'down', ['any']), host('h5', 'up', ['direct'])];
  assert.throws(
    () => hostOfEarlierCreate(answered, 'req-1', known),
    (error: CloudletError) => {
      assert.deepEqual((error.details as { hosts: string[] }).hosts, [
        'h4 (down)',
        'h2 (takes any-host requests, but was not asked: it takes no broadcasts now)',
        'h3 (takes any-host requests, but was not asked: it takes no broadcasts now)',
      ]);
      assert.match((error.details as { hint: string }).hint, /a host that is gone for good is taken out with "cloudlet hosts forget h4"$/);
      return true;
    },
  );
  // Only hosts that take direct requests, all asked: nothing stands in the way.
  assert.deepEqual(hostOfEarlierCreate(gathered([said('h1', null)]), 'req-1', [host('h1', 'up', ['direct', 'any', 'broadcast']), host('h5', 'up', ['direct'])]), { found: [] });
});
