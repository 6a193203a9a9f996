/** The neighbour-table parsers, on output captured from the real kernel and iproute2 6.1 (fixtures/capture.sh). */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import test from 'node:test';
import { addressesForMac, classifyStates, hasIpv4Entry, parseIpNeighJson, parseProcNetArp, type NeighbourEntry } from '../../../plugins/ip-discovery-arp/neighbours.ts';

const fixture = (name: string) => readFile(new URL(`./fixtures/${name}`, import.meta.url), 'utf8');
const report = { includeStale: true, bridge: 'br0', table: 'ip-neigh' } as const;

function byAddress(entries: NeighbourEntry[]): Map<string, NeighbourEntry> {
  return new Map(entries.map((e) => [e.address, e]));
}

test('neighbours — ip -s -j output: IPv4 and IPv6 entries with states, lowercase MACs and ages in ms', async () => {
  const entries = byAddress(parseIpNeighJson(await fixture('ip-s-neigh-fresh.json')));
  assert.deepEqual(entries.get('10.77.0.11'), { address: '10.77.0.11', family: 'ipv4', mac: '02:aa:00:00:00:11', state: 'REACHABLE', freshness: 'fresh', ageMs: 0 });
  assert.deepEqual(entries.get('10.77.0.12'), { address: '10.77.0.12', family: 'ipv4', mac: '02:aa:00:00:00:12', state: 'STALE', freshness: 'stale', ageMs: 0 });
  assert.equal(entries.get('10.77.0.14')?.state, 'PROBE');
  assert.equal(entries.get('10.77.0.14')?.freshness, 'fresh');
  // Static entries are never confirmed: their counters say nothing about the VM.
  assert.equal(entries.get('10.77.0.13')?.ageMs, null);
  assert.equal(entries.get('10.77.0.16')?.state, 'NOARP');
  assert.equal(entries.get('10.77.0.16')?.ageMs, null);
  assert.equal(entries.get('fe80::aa:ff:fe00:11')?.family, 'ipv6');
  assert.equal(entries.get('2001:db8:77::11')?.freshness, 'stale');
});

test('neighbours — ip -s -j output later: FAILED and INCOMPLETE entries have no MAC and are unusable; ages count seconds', async () => {
  const entries = byAddress(parseIpNeighJson(await fixture('ip-s-neigh-later.json')));
  for (const address of ['10.77.0.20', '10.77.0.14', '10.77.0.15']) assert.deepEqual([entries.get(address)?.state, entries.get(address)?.mac, entries.get(address)?.freshness], ['FAILED', null, 'unusable']);
  assert.deepEqual([entries.get('10.77.0.21')?.state, entries.get('10.77.0.21')?.freshness], ['INCOMPLETE', 'unusable']);
  // "confirmed": 4, "updated": 4 → 4 s; STALE with confirmed 64 and updated 4 → the smaller.
  assert.equal(entries.get('10.77.0.11')?.ageMs, 4000);
  assert.equal(entries.get('10.77.0.12')?.ageMs, 4000);
});

test('neighbours — a real guest entry right after its DHCP lease is DELAY and counts from when it was learned', async () => {
  const [delay] = parseIpNeighJson(await fixture('ip-s-neigh-guest-lease.json'));
  // "confirmed": 60 is the kernel's back-dating of a new entry, "updated": 0 is when dnsmasq wrote it.
  assert.deepEqual(delay, { address: '10.77.0.75', family: 'ipv4', mac: '52:54:00:12:34:56', state: 'DELAY', freshness: 'fresh', ageMs: 0 });
  const [reachable] = parseIpNeighJson(await fixture('ip-s-neigh-guest-5s.json'));
  assert.equal(reachable?.state, 'REACHABLE');
});

test('neighbours — without -s there are no counters: ageMs is null', async () => {
  const entries = parseIpNeighJson(await fixture('ip-neigh-later.json'));
  assert.ok(entries.length > 0);
  assert.ok(entries.every((e) => e.ageMs === null));
});

test('neighbours — addressesForMac: fresh IPv4 first, then IPv6 global before link-local, stale last and marked', async () => {
  const entries = parseIpNeighJson(await fixture('ip-s-neigh-later.json'));
  const found = addressesForMac(entries, '02:aa:00:00:00:11', report);
  assert.deepEqual(
    found.map((a) => [a.address, a.family, a.scope, a.detail?.state, a.detail?.fresh]),
    [
      ['10.77.0.11', 'ipv4', 'global', 'REACHABLE', true],
      ['fe80::aa:ff:fe00:11', 'ipv6', 'link-local', 'REACHABLE', true],
      ['2001:db8:77::11', 'ipv6', 'global', 'STALE', false],
    ],
  );
  assert.ok(found.every((a) => a.source === 'ip-discovery-arp' && a.detail?.bridge === 'br0' && a.detail?.table === 'ip-neigh'));
});

test('neighbours — addressesForMac: an uppercase MAC (asked or printed) matches', async () => {
  const entries = parseIpNeighJson(await fixture('ip-s-neigh-later.json'));
  assert.deepEqual(
    addressesForMac(entries, '02:AA:00:00:00:13', report).map((a) => a.address),
    ['10.77.0.13', '2001:db8:77::13'],
  );
  const shouting = (await fixture('ip-s-neigh-later.json')).replaceAll('02:aa:00:00:00:12', '02:AA:00:00:00:12');
  assert.deepEqual(addressesForMac(parseIpNeighJson(shouting), '02:aa:00:00:00:12', report).map((a) => a.address), ['10.77.0.12']);
});

test('neighbours — addressesForMac: FAILED entries are never reported, not even through a MAC they once had', async () => {
  // 10.77.0.14 was PROBE with 02:aa:00:00:00:14; the kernel dropped the MAC when it went FAILED.
  const later = parseIpNeighJson(await fixture('ip-s-neigh-later.json'));
  assert.deepEqual(addressesForMac(later, '02:aa:00:00:00:14', report), []);
  assert.equal(hasIpv4Entry(later, '02:aa:00:00:00:14', true), false);
  // A hand-made entry keeping its MAC while FAILED (as /proc/net/arp shows them) is still not reported.
  const failedWithMac = parseIpNeighJson(JSON.stringify([{ dst: '10.77.0.14', lladdr: '02:aa:00:00:00:14', state: ['FAILED'] }]));
  assert.deepEqual(addressesForMac(failedWithMac, '02:aa:00:00:00:14', report), []);
});

test('neighbours — addressesForMac: includeStale false drops STALE entries; a MAC with no entry gives []', async () => {
  const entries = parseIpNeighJson(await fixture('ip-s-neigh-later.json'));
  assert.deepEqual(addressesForMac(entries, '02:aa:00:00:00:12', { ...report, includeStale: false }), []);
  assert.deepEqual(addressesForMac(entries, '02:aa:00:00:00:11', { ...report, includeStale: false }).map((a) => a.address), ['10.77.0.11', 'fe80::aa:ff:fe00:11']);
  assert.deepEqual(addressesForMac(entries, '02:00:00:00:00:99', report), []);
});

test('neighbours — entries without lladdr, with odd fields or bad addresses are skipped or kept MAC-less', () => {
  const entries = parseIpNeighJson(
    JSON.stringify([
      { dst: '10.0.0.1', state: ['REACHABLE'] },
      { dst: 'not-an-ip', lladdr: '02:00:00:00:00:01', state: ['REACHABLE'] },
      { lladdr: '02:00:00:00:00:01' },
      'garbage',
      { dst: '10.0.0.2', lladdr: '02:00:00:00:00:02', state: ['NONE'] },
      { dst: '10.0.0.3', lladdr: '02:00:00:00:00:03', state: ['REACHABLE'], router: null, dev: 'br0', used: 1, confirmed: 2, updated: 3 },
    ]),
  );
  assert.deepEqual(
    entries.map((e) => [e.address, e.mac, e.freshness, e.ageMs]),
    [
      ['10.0.0.1', null, 'fresh', null],
      ['10.0.0.2', '02:00:00:00:00:02', 'unusable', null],
      ['10.0.0.3', '02:00:00:00:00:03', 'fresh', 2000],
    ],
  );
  assert.deepEqual(addressesForMac(entries, '02:00:00:00:00:02', report), []);
  assert.deepEqual(parseIpNeighJson(''), []);
  assert.throws(() => parseIpNeighJson('10.0.0.1 lladdr 02:00:00:00:00:01 REACHABLE'), SyntaxError);
  assert.throws(() => parseIpNeighJson('{}'), TypeError);
});

test('neighbours — classifyStates: FAILED/INCOMPLETE win over anything; unknown states are unusable', () => {
  assert.deepEqual(classifyStates(['REACHABLE', 'FAILED']), { state: 'FAILED', freshness: 'unusable' });
  assert.deepEqual(classifyStates(['delay']), { state: 'DELAY', freshness: 'fresh' });
  assert.deepEqual(classifyStates([]), { state: 'NONE', freshness: 'unusable' });
});

test('neighbours — /proc/net/arp: flags decide (FAILED rows keep their old MAC), other devices are ignored', async () => {
  const text = await fixture('proc-net-arp.txt');
  const entries = byAddress(parseProcNetArp(text, 'br0'));
  assert.deepEqual(entries.get('10.77.0.11'), { address: '10.77.0.11', family: 'ipv4', mac: '02:aa:00:00:00:11', state: 'COMPLETE', freshness: 'unknown', ageMs: null });
  assert.equal(entries.get('10.77.0.13')?.state, 'PERMANENT');
  assert.deepEqual([entries.get('10.77.0.14')?.state, entries.get('10.77.0.14')?.mac], ['INCOMPLETE', null]);
  const list = parseProcNetArp(text, 'br0');
  assert.deepEqual(addressesForMac(list, '02:aa:00:00:00:14', { ...report, table: 'proc-net-arp' }), []);
  assert.deepEqual(
    addressesForMac(list, '02:aa:00:00:00:11', { ...report, table: 'proc-net-arp' }).map((a) => [a.address, a.detail?.state, a.detail?.fresh]),
    [['10.77.0.11', 'COMPLETE', false]],
  );
  // Freshness unknown is not "fresh": includeStale false drops it; PERMANENT stays.
  assert.deepEqual(addressesForMac(list, '02:aa:00:00:00:11', { ...report, includeStale: false, table: 'proc-net-arp' }), []);
  assert.equal(addressesForMac(list, '02:aa:00:00:00:13', { ...report, includeStale: false, table: 'proc-net-arp' }).length, 1);
  assert.deepEqual(parseProcNetArp(text, 'br1'), []);
});

test('neighbours — hasIpv4Entry counts only what would be reported: a STALE entry holds back no probe when stale ones are not reported', () => {
  // Before, a STALE entry counted either way: with includeStale false it stopped the probe that would
  // refresh it, and get-vm-ip waited out its timeout for a VM that answers ARP.
  const stale = parseIpNeighJson(JSON.stringify([{ dst: '10.77.0.11', lladdr: '02:aa:00:00:00:11', state: ['STALE'] }]));
  assert.equal(hasIpv4Entry(stale, '02:aa:00:00:00:11', true), true);
  assert.equal(hasIpv4Entry(stale, '02:aa:00:00:00:11', false), false);
  const fresh = parseIpNeighJson(JSON.stringify([{ dst: '10.77.0.11', lladdr: '02:aa:00:00:00:11', state: ['REACHABLE'] }]));
  assert.equal(hasIpv4Entry(fresh, '02:aa:00:00:00:11', false), true);
  const ipv6Only = parseIpNeighJson(JSON.stringify([{ dst: '2001:db8::11', lladdr: '02:aa:00:00:00:11', state: ['REACHABLE'] }]));
  assert.equal(hasIpv4Entry(ipv6Only, '02:aa:00:00:00:11', true), false);
});
