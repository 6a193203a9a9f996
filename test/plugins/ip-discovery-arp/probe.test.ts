/**
 * The probe sweep for real, inside a throw-away namespace whose bridge has no other hosts: every datagram
 * leaves an entry in the namespace's neighbour table, so the table shows exactly which addresses were probed.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { withNetns, type Netns } from '../../support/netns.ts';
import { discoverIn } from './namespace-runner.ts';

const NOBODY = { vm: 'probe.nobody00', mac: '02:00:00:00:00:99' };

/** The addresses with an IPv4 entry on the bridge (INCOMPLETE or FAILED: nobody answers). */
async function probedAddresses(ns: Netns): Promise<string[]> {
  const entries = JSON.parse(await ns.run(['ip', '-j', 'neigh', 'show', 'dev', ns.bridge, 'nud', 'all'])) as { dst: string }[];
  return entries
    .map((e) => e.dst)
    .filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a) && !a.startsWith('224.'))
    .sort((a, b) => Number(a.split('.')[3]) - Number(b.split('.')[3]));
}

test('probe — sweeps the whole /24 except network, broadcast and bridge; an absent MAC still gives []', { timeout: 120_000 }, async (t) => {
  const ns = await withNetns(t);
  const answer = await discoverIn(ns, NOBODY, { bridge: ns.bridge, probe: { enabled: true, maxAddresses: 4096, ratePerSecond: 1000, settleMs: 100 } });
  assert.equal(answer.ok, true, JSON.stringify(answer));
  assert.deepEqual(answer.addresses, []);
  const probed = await probedAddresses(ns);
  assert.equal(probed.length, 253);
  assert.equal(probed[0], '10.77.0.2');
  assert.equal(probed.at(-1), '10.77.0.254');
  for (const never of ['10.77.0.0', '10.77.0.1', '10.77.0.255']) assert.ok(!probed.includes(never), never);
  const done = answer.logs.find((l) => l.msg === 'ip-discovery-arp: probe sweep done');
  assert.deepEqual(done && { ...(done.obj as object) }, { bridge: 'br0', mac: NOBODY.mac, targets: 253, sent: 253, failed: 0, stopped: false, outcome: 'settled' });
});

test('probe — never more than maxAddresses, paced at ratePerSecond, only inside cidr', { timeout: 120_000 }, async (t) => {
  const ns = await withNetns(t);
  const answer = await discoverIn(ns, NOBODY, {
    bridge: ns.bridge,
    probe: { enabled: true, maxAddresses: 20, ratePerSecond: 50, cidr: '10.77.0.64/26', settleMs: 0 },
  });
  assert.equal(answer.ok, true, JSON.stringify(answer));
  const probed = await probedAddresses(ns);
  assert.deepEqual(probed, Array.from({ length: 20 }, (_, i) => `10.77.0.${64 + i}`));
  // 20 datagrams at 50/s: the last leaves 19 × 20 ms after the first.
  assert.ok((answer.elapsedMs ?? 0) >= 380, `took ${answer.elapsedMs} ms`);
});

test('probe — a cidr outside the bridge subnet is refused before anything is sent', { timeout: 120_000 }, async (t) => {
  const ns = await withNetns(t);
  const answer = await discoverIn(ns, NOBODY, { bridge: ns.bridge, probe: { enabled: true, cidr: '10.78.0.0/24' } });
  assert.equal(answer.ok, false);
  assert.equal(answer.error?.code, 'ARP_PROBE_INVALID');
  assert.deepEqual(await probedAddresses(ns), []);
});

test('probe — an address the kernel would not send out of the bridge is never probed (part of the subnet routed elsewhere, the bridge down)', { timeout: 120_000 }, async (t) => {
  // Before, targets came from the bridge's addresses alone and the socket was not tied to the bridge: with
  // 10.77.0.0/25 routed via another interface, or the bridge down (its subnet then goes by the default
  // route), the datagrams left through that other interface, off the host.
  const ns = await withNetns(t);
  for (const argv of [
    // The host's uplink, as a veth pair inside the namespace; no IPv6 on it, so its counter counts only us.
    ['ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1'],
    ['sysctl', '-q', '-w', 'net.ipv6.conf.up0.disable_ipv6=1', 'net.ipv6.conf.up1.disable_ipv6=1'],
    ['ip', 'addr', 'add', '10.99.0.1/24', 'dev', 'up0'],
    ['ip', 'link', 'set', 'up1', 'up'],
    ['ip', 'link', 'set', 'up0', 'up'],
    ['ip', 'route', 'add', '10.77.0.0/25', 'via', '10.99.0.2', 'dev', 'up0'],
    ['ip', 'route', 'add', 'default', 'via', '10.99.0.2', 'dev', 'up0'],
  ]) await ns.run(argv);
  const sentOnUplink = async () => (JSON.parse(await ns.run(['ip', '-j', '-s', 'link', 'show', 'dev', 'up0'])) as { stats64: { tx: { packets: number } } }[])[0]?.stats64.tx.packets;
  const before = await sentOnUplink();
  const options = { bridge: ns.bridge, probe: { enabled: true, maxAddresses: 4096, ratePerSecond: 2000, settleMs: 0 } };

  const part = await discoverIn(ns, NOBODY, options);
  assert.equal(part.ok, true, JSON.stringify(part));
  const probed = await probedAddresses(ns);
  assert.equal(probed.length, 127, probed.join(' '));
  assert.equal(probed[0], '10.77.0.128');
  assert.equal(await sentOnUplink(), before, 'no datagram left by the other interface');
  assert.ok(part.logs.some((l) => l.msg?.includes('126 address(es) of the probe range are not routed out of br0; not probed')), JSON.stringify(part.logs));

  await ns.run(['ip', 'neigh', 'flush', 'dev', ns.bridge]);
  await ns.run(['ip', 'link', 'set', ns.bridge, 'down']);
  const down = await discoverIn(ns, NOBODY, options);
  assert.equal(down.ok, true, JSON.stringify(down));
  assert.equal(await sentOnUplink(), before, 'nothing sent with the bridge down');
  assert.ok(!down.logs.some((l) => l.msg === 'ip-discovery-arp: probe sweep done'), JSON.stringify(down.logs));
});
