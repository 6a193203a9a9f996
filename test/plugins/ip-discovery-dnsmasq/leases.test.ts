import assert from 'node:assert/strict';
import test from 'node:test';
import { isExpired, leasesForMac, macFromDuid, parseLeases } from '../../../plugins/ip-discovery-dnsmasq/leases.ts';

const NOW_MS = 1_700_000_000_000;
const LATER = 1_700_003_600; // an hour after NOW_MS, in seconds
const EARLIER = 1_699_996_400; // an hour before

/** A file as dnsmasq 2.90 writes it with DHCPv4 and DHCPv6 on, plus what a hand or a bug may add. */
const LEASE_FILE = [
  `${LATER} 52:54:00:aa:bb:01 10.77.0.11 vm-one 01:52:54:00:aa:bb:01`,
  `${LATER} 52:54:00:aa:bb:02 10.77.0.12 * *`,
  `0 52:54:00:aa:bb:03 10.77.0.13 forever *`,
  `${EARLIER} 52:54:00:aa:bb:04 10.77.0.14 gone *`,
  `${LATER} 02:00:00:00:00:99 10.77.0.99 not-a-vm *`,
  '',
  '# a comment someone added',
  '   ',
  'garbage',
  `${LATER} 52:54:00:aa:bb:05 10.77.0.300 bad-ip *`,
  `soon 52:54:00:aa:bb:06 10.77.0.16 bad-expiry *`,
  `${LATER} 52:54:00:aa:bb:07 10.77.0.17 two words *`,
  'duid 00:01:00:01:2c:aa:bb:cc:0a:0b:0c:0d:0e:0f',
  // DUID-LLT of 52:54:00:aa:bb:01, DUID-LL of 52:54:00:aa:bb:02, a DUID-EN (no MAC in it), a temporary address.
  `${LATER} 1234567 fd00:77::11 vm-one 00:01:00:01:2c:aa:bb:cc:52:54:00:aa:bb:01`,
  `${LATER} 42 FD00:77::12 * 00:03:00:01:52:54:00:aa:bb:02`,
  `${LATER} 7 fd00:77::13 * 00:02:00:00:ab:11:52:54:00:aa:bb:03`,
  `${LATER} T99 fd00:77::14 * 00:03:00:01:52:54:00:aa:bb:01`,
  `${LATER} xyz fd00:77::15 * 00:03:00:01:52:54:00:aa:bb:01`,
  '',
].join('\n');

test('leases — IPv4 lines: mac, address, hostname and client id; "*" is none', () => {
  const parsed = parseLeases(LEASE_FILE);
  assert.deepEqual(parsed.v4[0], {
    family: 'ipv4',
    address: '10.77.0.11',
    mac: '52:54:00:aa:bb:01',
    expiry: LATER,
    hostname: 'vm-one',
    clientId: '01:52:54:00:aa:bb:01',
    line: 1,
  });
  assert.equal(parsed.v4[1]?.hostname, null);
  assert.equal(parsed.v4[1]?.clientId, null);
  assert.deepEqual(
    parsed.v4.map((lease) => lease.address),
    ['10.77.0.11', '10.77.0.12', '10.77.0.13', '10.77.0.14', '10.77.0.99'],
  );
});

test('leases — the IPv6 part after the duid line: iaid, temporary flag, MAC from DUID-LLT/DUID-LL only', () => {
  const parsed = parseLeases(LEASE_FILE);
  assert.equal(parsed.serverDuid, '00:01:00:01:2c:aa:bb:cc:0a:0b:0c:0d:0e:0f');
  assert.deepEqual(
    parsed.v6.map((lease) => [lease.address, lease.mac, lease.iaid, lease.temporary]),
    [
      ['fd00:77::11', '52:54:00:aa:bb:01', 1234567, false],
      ['fd00:77::12', '52:54:00:aa:bb:02', 42, false],
      ['fd00:77::13', null, 7, false],
      ['fd00:77::14', '52:54:00:aa:bb:01', 99, true],
    ],
  );
});

test('leases — comments and blank lines are ignored; malformed lines are skipped with a reason, never thrown', () => {
  const parsed = parseLeases(LEASE_FILE);
  assert.deepEqual(
    parsed.skipped.map((s) => [s.line, s.text.split(' ')[0]]),
    [
      [9, 'garbage'],
      [10, String(LATER)],
      [11, 'soon'],
      [12, String(LATER)],
      [18, String(LATER)],
    ],
  );
  assert.match(parsed.skipped[0]!.reason, /expected 5 fields/);
  assert.match(parsed.skipped[1]!.reason, /neither IPv4 nor IPv6/);
  assert.match(parsed.skipped[2]!.reason, /expiry/);
  assert.match(parsed.skipped[4]!.reason, /IAID/);
  for (const text of ['', '\n\n', 'duid', 'duid zz', '\0\0\0', '1 2 3 4 5 6 7', `${LATER} 52:54:00:aa:bb:01 10.77.0.1 * not-hex`]) {
    assert.doesNotThrow(() => parseLeases(text));
  }
  assert.equal(parseLeases('duid zz').skipped.length, 1);
  assert.equal(parseLeases(`${LATER} 52:54:00:aa:bb:01 10.77.0.1 * not-hex`).v4.length, 0);
});

test('leases — matching: only the asked MAC, any case; expired leases left out; expiry 0 is infinite', () => {
  const parsed = parseLeases(LEASE_FILE);
  assert.deepEqual(
    leasesForMac(parsed, '52:54:00:AA:BB:01', NOW_MS).map((l) => l.address),
    ['10.77.0.11', 'fd00:77::11', 'fd00:77::14'],
  );
  assert.deepEqual(
    leasesForMac(parsed, '52:54:00:aa:bb:02', NOW_MS).map((l) => l.address),
    ['10.77.0.12', 'fd00:77::12'],
  );
  assert.deepEqual(
    leasesForMac(parsed, '52:54:00:aa:bb:03', NOW_MS).map((l) => l.address),
    ['10.77.0.13'],
    'an infinite lease is live; a DUID-EN never matches',
  );
  assert.deepEqual(leasesForMac(parsed, '52:54:00:aa:bb:04', NOW_MS), [], 'expired');
  assert.equal(leasesForMac(parsed, '52:54:00:aa:bb:04', (EARLIER - 1) * 1000).length, 1, 'live before its expiry');
  assert.deepEqual(leasesForMac(parsed, '52:54:00:aa:bb:ff', NOW_MS), [], 'a MAC without a lease');
  // The lease of a machine that is no VM of ours is reported to nobody else.
  for (const mac of ['52:54:00:aa:bb:01', '52:54:00:aa:bb:02', '52:54:00:aa:bb:03']) {
    assert.ok(!leasesForMac(parsed, mac, NOW_MS).some((l) => l.address === '10.77.0.99'));
  }
});

test('leases — uppercase MACs and client ids in the file are matched lowercase', () => {
  const parsed = parseLeases(`${LATER} 52:54:00:AA:BB:0C 10.77.0.40 * 01:52:54:00:AA:BB:0C\n`);
  assert.equal(parsed.v4[0]?.mac, '52:54:00:aa:bb:0c');
  assert.equal(parsed.v4[0]?.clientId, '01:52:54:00:aa:bb:0c');
  assert.equal(leasesForMac(parsed, '52:54:00:aa:bb:0c', NOW_MS).length, 1);
  assert.equal(leasesForMac(parsed, ' 52:54:00:AA:BB:0C ', NOW_MS).length, 1);
});

test('leases — several leases of one MAC: the longest-lived first', () => {
  const parsed = parseLeases(
    [`${LATER} 52:54:00:aa:bb:01 10.77.0.20 * 01:aa`, `0 52:54:00:aa:bb:01 10.77.0.21 * 01:bb`, `${LATER + 60} 52:54:00:aa:bb:01 10.77.0.22 * 01:cc`].join('\n'),
  );
  assert.deepEqual(
    leasesForMac(parsed, '52:54:00:aa:bb:01', NOW_MS).map((l) => l.address),
    ['10.77.0.21', '10.77.0.22', '10.77.0.20'],
  );
});

test('leases — a non-Ethernet hardware address keeps its type prefix and matches no MAC', () => {
  const parsed = parseLeases(`${LATER} 20-52:54:00:aa:bb:01 10.77.0.30 * *\n${LATER} 01- 10.77.0.31 * *\n`);
  assert.deepEqual(parsed.v4.map((l) => l.mac), ['20-52:54:00:aa:bb:01', '01-']);
  assert.deepEqual(leasesForMac(parsed, '52:54:00:aa:bb:01', NOW_MS), []);
});

test('leases — macFromDuid reads DUID-LLT and DUID-LL of Ethernet, nothing else', () => {
  assert.equal(macFromDuid('00:01:00:01:2c:aa:bb:cc:52:54:00:aa:bb:01'), '52:54:00:aa:bb:01');
  assert.equal(macFromDuid('00:03:00:01:52:54:00:AA:BB:02'), '52:54:00:aa:bb:02');
  assert.equal(macFromDuid('00:03:00:06:52:54:00:aa:bb:02'), null, 'hardware type 6 (IEEE 802) is not Ethernet');
  assert.equal(macFromDuid('00:02:00:00:ab:11:52:54:00:aa:bb:03'), null, 'DUID-EN');
  assert.equal(macFromDuid('00:04:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00'), null, 'DUID-UUID');
  assert.equal(macFromDuid('00:03:00:01:52:54:00:aa'), null, 'too short');
});

test('leases — isExpired: past expiry is expired, 0 never is', () => {
  assert.equal(isExpired({ expiry: 0 }, NOW_MS), false);
  assert.equal(isExpired({ expiry: NOW_MS / 1000 }, NOW_MS), false);
  assert.equal(isExpired({ expiry: NOW_MS / 1000 - 1 }, NOW_MS), true);
});
