import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import test from 'node:test';
import type { ReplyEnvelope } from '../../core/envelope.ts';
import { runCli } from '../helpers.ts';
import { startDnsmasq } from '../support/netns.ts';
import { startQemuHost } from '../support/qemu-host.ts';

const ipNothing = fileURLToPath(new URL('../fixtures/plugins/ip-nothing/index.ts', import.meta.url));

function ok<T>(reply: ReplyEnvelope): T {
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  return reply.result as T;
}

interface Address {
  address: string;
  family: string;
  scope: string;
  source: string;
}

test('guest agent — the chain falls back past an empty source; each of two VMs gets its own leased IP', async (t) => {
  const host = await startQemuHost(t, {
    beforeAgent: async (ns) => {
      await startDnsmasq(ns);
    },
    // The empty source first: the answer must come from the guest agent.
    pluginsYaml: () => `  - use: ${ipNothing}\n  - use: ip-discovery-guest-agent\n`,
  });
  const vms = await Promise.all([0, 1].map(() => host.call('create-vm', { image: 'tiny-qga', memory: 128, vcpus: 1 })));
  const ids = vms.map((reply) => ok<{ id: string }>(reply).id);
  for (const id of ids) {
    const stages: string[] = [];
    const answer = ok<{ addresses: Address[]; strategies: string[] }>(
      await host.call('get-vm-ip', { vm: id, wait: true, timeoutMs: 60_000 }, (p) => stages.push(p.stage)),
    );
    await host.waitForSerial(id, 'cloudlet-guest: lease');
    const leased = /cloudlet-guest: lease (\S+)/.exec(await host.serialLog(id))?.[1];
    assert.deepEqual(answer.strategies, ['ip-nothing', 'ip-discovery-guest-agent']);
    const ipv4 = answer.addresses.filter((a) => a.family === 'ipv4');
    assert.deepEqual(ipv4.map((a) => [a.address, a.scope, a.source]), [[leased, 'global', 'ip-discovery-guest-agent']]);
    // Link-local addresses are left out unless asked for (the filter itself is unit-tested in discovery.test.ts).
    assert.ok(answer.addresses.every((a) => a.scope === 'global'));
    const all = ok<{ addresses: Address[] }>(await host.call('get-vm-ip', { vm: id, includeLinkLocal: true }));
    for (const address of answer.addresses) assert.ok(all.addresses.some((a) => a.address === address.address));
  }
  const leasedIps = await Promise.all(ids.map(async (id) => /cloudlet-guest: lease (\S+)/.exec(await host.serialLog(id))?.[1]));
  assert.notEqual(leasedIps[0], leasedIps[1]);
  // get-vm and list-vms carry the addresses too.
  const listed = ok<{ vms: { id: string; addresses: Address[] }[] }>(await host.call('list-vms', {}));
  for (const [index, id] of ids.entries()) {
    assert.deepEqual(listed.vms.find((v) => v.id === id)?.addresses.filter((a) => a.family === 'ipv4').map((a) => a.address), [leasedIps[index]]);
  }
});

test('guest agent — cloudlet call create-vm --wait-ip returns with the address; a guest without an agent times out with IP_NOT_FOUND', async (t) => {
  const host = await startQemuHost(t, {
    beforeAgent: async (ns) => {
      await startDnsmasq(ns);
    },
    pluginsYaml: () => '  - use: ip-discovery-guest-agent\n',
  });
  const created = await runCli(['call', 'create-vm', '--config', host.configFile, '--payload', '{"image":"tiny-qga","memory":128,"vcpus":1}', '--wait-ip'], { timeoutMs: 120_000 });
  assert.equal(created.code, 0, created.stderr);
  const result = JSON.parse(created.stdout) as { id: string; addresses: Address[] };
  assert.match(created.stderr, /waiting-for-ip/);
  const leased = /cloudlet-guest: lease (\S+)/.exec(await host.serialLog(result.id))?.[1];
  assert.deepEqual(result.addresses.filter((a) => a.family === 'ipv4').map((a) => a.address), [leased]);

  const silent = ok<{ id: string }>(await host.call('create-vm', { image: 'tiny', memory: 128, vcpus: 1 }));
  const timedOut = await host.call('get-vm-ip', { vm: silent.id, wait: true, timeoutMs: 3_000 });
  assert.equal(timedOut.error?.code, 'IP_NOT_FOUND');
  // --wait-ip keeps within --timeout: it used to wait its own two minutes, past any --timeout (runCli gives
  // up after 30 s). Which error ends it depends on how much of the 4 s get-vm's own guest-agent ask took;
  // either way time ran out, so exit 5.
  const bounded = await runCli(['call', 'get-vm', '--config', host.configFile, '--payload', JSON.stringify({ vm: silent.id }), '--wait-ip', '--timeout', '4000'], { timeoutMs: 30_000 });
  assert.equal(bounded.code, 5, bounded.stderr);
  assert.match(bounded.stderr, /IP_NOT_FOUND|DEADLINE_EXCEEDED/);
  // A payload wait longer than the request's deadline ends just before it, with get-vm-ip's own answer
  // (which plugins it asked), not the deadline's. Before, it was DEADLINE_EXCEEDED.
  const cut = await runCli(['call', 'get-vm-ip', '--config', host.configFile, '--payload', JSON.stringify({ vm: silent.id, wait: true, timeoutMs: 20_000 }), '--timeout', '2500'], { timeoutMs: 30_000 });
  assert.equal(cut.code, 5, cut.stderr);
  assert.match(cut.stderr, /error \[IP_NOT_FOUND\] from \S+: no address for \S+ within \d+ ms, all the request's deadline left of the 20000 ms asked \(asked: ip-discovery-guest-agent\)/);
});
