/**
 * ip-discovery-arp against the real thing: two tiny guests (scripts/build-test-guest.sh) booted with QEMU on taps
 * of a bridge inside a throw-away network namespace, dnsmasq handing out leases there. The strategy runs inside
 * the namespace (test/plugins/ip-discovery-arp/in-namespace.ts) so it reads that namespace's neighbour table;
 * every datagram it sends stays on the namespace's bridge. The namespace, QEMU and dnsmasq die with the test.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import type { DiscoveredAddress, VmNetworkIdentity } from '../../core/capabilities/ip-discovery.ts';
import { startDnsmasq, withNetns, type Netns } from '../support/netns.ts';
import { ensureGuest } from '../support/qemu-host.ts';
import { bootTestGuest, guestLease } from '../support/test-guest.ts';
import { discoverIn, waitIn, type StrategyAnswer } from '../plugins/ip-discovery-arp/namespace-runner.ts';

interface Guest extends VmNetworkIdentity {
  /** From the guest's own console marker `cloudlet-guest: lease <ip>`. */
  leasedIp: string;
}

async function bootGuest(ns: Netns, name: string): Promise<Guest> {
  const guest = await bootTestGuest(ns, name);
  return { vm: `arp.${name}`, mac: guest.mac, leasedIp: await guestLease(guest) };
}

function addresses(answer: StrategyAnswer): DiscoveredAddress[] {
  assert.equal(answer.ok, true, `the strategy failed: ${JSON.stringify(answer.error)} ${JSON.stringify(answer.logs)}`);
  return answer.addresses ?? [];
}

const ipv4Of = (found: DiscoveredAddress[]) => found.filter((a) => a.family === 'ipv4').map((a) => a.address);
const identity = (guest: Guest, bridge?: string): VmNetworkIdentity => ({ vm: guest.vm, mac: guest.mac, ...(bridge ? { bridge } : {}) });

test('ip-discovery-arp — two real guests on a namespace bridge', { timeout: 400_000 }, async (t) => {
  ensureGuest();
  const ns = await withNetns(t);
  await startDnsmasq(ns);
  const guests = await Promise.all([bootGuest(ns, 'vm1'), bootGuest(ns, 'vm2')]);
  const [vm1, vm2] = guests as [Guest, Guest];
  assert.notEqual(vm1.leasedIp, vm2.leasedIp);
  t.diagnostic(`vm1 ${vm1.mac} → ${vm1.leasedIp}, vm2 ${vm2.mac} → ${vm2.leasedIp}`);
  const flush = () => ns.run(['ip', 'neigh', 'flush', 'dev', ns.bridge]);
  const probing = { bridge: ns.bridge, probe: { enabled: true, ratePerSecond: 500, settleMs: 2_000 } };

  await t.test('discover — each guest gets the IPv4 address its console reports, and only its own', async () => {
    for (const guest of guests) {
      const found = addresses(await discoverIn(ns, identity(guest), { bridge: ns.bridge }));
      assert.deepEqual(ipv4Of(found), [guest.leasedIp], JSON.stringify(found));
      assert.equal(found[0]?.scope, 'global');
      assert.equal(found[0]?.source, 'ip-discovery-arp');
      assert.match(String(found[0]?.detail?.state), /^(REACHABLE|DELAY|PROBE|STALE)$/);
    }
  });

  await t.test("discover — without the bridge option the caller's vm.bridge is used", async () => {
    assert.deepEqual(ipv4Of(addresses(await discoverIn(ns, identity(vm2, ns.bridge), {}))), [vm2.leasedIp]);
  });

  await t.test('probe — a flushed entry is gone without probing and comes back through the probe sweep', async () => {
    await flush();
    assert.deepEqual(ipv4Of(addresses(await discoverIn(ns, identity(vm1), { bridge: ns.bridge }))), []);
    const answer = await discoverIn(ns, identity(vm1), probing);
    const found = addresses(answer);
    assert.deepEqual(ipv4Of(found), [vm1.leasedIp], JSON.stringify(answer));
    assert.equal(found[0]?.detail?.fresh, true);
    const done = answer.logs.find((l) => l.msg === 'ip-discovery-arp: probe sweep done')?.obj as { sent: number; stopped: boolean; outcome: string } | undefined;
    assert.ok(done, JSON.stringify(answer.logs));
    assert.equal(done.outcome, 'change', 'ip monitor saw the entry appear');
    t.diagnostic(`probe found ${vm1.leasedIp} after ${done.sent} datagrams (stopped early: ${done.stopped}) in ${answer.elapsedMs?.toFixed(0)} ms`);
  });

  await t.test("probe — a MAC with no entry gives [] after a full sweep, never another guest's address", async () => {
    await flush();
    const found = addresses(await discoverIn(ns, { vm: 'arp.ghost', mac: '52:54:00:ff:ff:fe' }, probing));
    assert.deepEqual(found, []);
    // The sweep reached both guests: their entries are back, each under its own MAC.
    for (const guest of guests) assert.deepEqual(ipv4Of(addresses(await discoverIn(ns, identity(guest), { bridge: ns.bridge }))), [guest.leasedIp]);
  });

  await t.test('discover — a STALE entry is reported marked, after the fresh ones; includeStale false hides it', async () => {
    await ns.run(['ip', 'neigh', 'replace', vm2.leasedIp, 'lladdr', vm2.mac, 'dev', ns.bridge, 'nud', 'stale']);
    const found = addresses(await discoverIn(ns, identity(vm2), { bridge: ns.bridge }));
    assert.deepEqual(found.filter((a) => a.family === 'ipv4').map((a) => [a.address, a.detail?.state, a.detail?.fresh]), [[vm2.leasedIp, 'STALE', false]]);
    assert.deepEqual(ipv4Of(addresses(await discoverIn(ns, identity(vm2), { bridge: ns.bridge, includeStale: false }))), []);
  });

  await t.test('waitForChange — resolves when the guest’s entry appears; times out for an absent MAC; leaves no ip monitor', async () => {
    await flush();
    const waiting = waitIn(ns, identity(vm2), { bridge: ns.bridge }, 60_000);
    await waiting.watching;
    // `ip monitor` subscribes within milliseconds of the call; then make the kernel resolve vm2.
    await new Promise((r) => setTimeout(r, 500));
    const probed = addresses(await discoverIn(ns, identity(vm2), probing));
    assert.deepEqual(ipv4Of(probed), [vm2.leasedIp]);
    const woke = await waiting.answer;
    assert.equal(woke.ok, true, JSON.stringify(woke));
    assert.ok((woke.elapsedMs ?? Infinity) < 30_000, `woke after ${woke.elapsedMs} ms`);
    // Woken by `ip monitor`, not by the 1 s polling fallback the strategy uses when it cannot watch.
    assert.ok(!JSON.stringify(woke.logs ?? []).includes('cannot watch the neighbour table'), JSON.stringify(woke.logs));

    const idle = await new Promise<StrategyAnswer>((resolve, reject) => {
      const w = waitIn(ns, { vm: 'arp.ghost', mac: '52:54:00:ff:ff:fe' }, { bridge: ns.bridge }, 1_500);
      w.answer.then(resolve, reject);
    });
    assert.equal(idle.ok, true);
    assert.ok((idle.elapsedMs ?? 0) >= 1_400, `returned after ${idle.elapsedMs} ms`);
    assert.equal((await ns.exec(['pgrep', '-f', 'ip monitor neigh'])).code, 1, 'no ip monitor left running');
  });

  await t.test('fallback — without ip, /proc/net/arp still gives the IPv4 address (state COMPLETE)', async () => {
    await discoverIn(ns, identity(vm1), probing);
    const answer = await discoverIn(ns, identity(vm1), { bridge: ns.bridge, ipBinary: '/nonexistent/ip' });
    const found = addresses(answer);
    assert.deepEqual(found.map((a) => [a.address, a.detail?.state, a.detail?.table]), [[vm1.leasedIp, 'COMPLETE', 'proc-net-arp']]);
    assert.ok(answer.logs.some((l) => l.level === 'warn'));
  });

  await t.test('errors — a bridge that does not exist is ARP_READ_FAILED', async () => {
    const answer = await discoverIn(ns, identity(vm1), { bridge: 'nosuch0' });
    assert.equal(answer.ok, false);
    assert.equal(answer.error?.code, 'ARP_READ_FAILED');
    assert.match(answer.error?.message ?? '', /nosuch0/);
  });
});
