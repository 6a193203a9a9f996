/** Options schema and the probe's target list: bounded, on the bridge's subnets only, never network/broadcast/own. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import test from 'node:test';
import { CloudletError } from '../../../core/errors.ts';
import plugin from '../../../plugins/ip-discovery-arp/index.ts';
import { arpOptionsSchema } from '../../../plugins/ip-discovery-arp/options.ts';
import { parseBridgeSubnets, probeTargets } from '../../../plugins/ip-discovery-arp/probe.ts';

test('options — defaults: ip, probing off with 256 addresses at 200/s, stale entries reported', () => {
  assert.deepEqual(arpOptionsSchema.parse({}), {
    ipBinary: 'ip',
    probe: { enabled: false, maxAddresses: 256, ratePerSecond: 200, settleMs: 1000 },
    includeStale: true,
  });
  assert.deepEqual(arpOptionsSchema.parse({ probe: { enabled: true } }).probe, { enabled: true, maxAddresses: 256, ratePerSecond: 200, settleMs: 1000 });
});

test('options — bridge names, probe limits, cidr form and unknown keys are checked', () => {
  const rejects = (options: unknown) => assert.equal(arpOptionsSchema.safeParse(options).success, false, JSON.stringify(options));
  assert.equal(arpOptionsSchema.parse({ bridge: 'br-vms.10' }).bridge, 'br-vms.10');
  rejects({ bridge: 'a-bridge-name-too-long' });
  rejects({ bridge: 'br0; rm -rf /' });
  rejects({ bridge: '-br0' });
  rejects({ probe: { maxAddresses: 4097 } });
  rejects({ probe: { maxAddresses: 0 } });
  rejects({ probe: { ratePerSecond: 0 } });
  rejects({ probe: { cidr: '10.77.0.0' } });
  rejects({ probe: { cidr: '10.77.0.0/33' } });
  rejects({ probe: { cidr: '10.77.0.256/24' } });
  rejects({ probe: { cidr: 'fd00::/64' } });
  rejects({ probe: { enabled: true, burst: 5 } });
  rejects({ bridges: ['br0'] });
  assert.equal(arpOptionsSchema.parse({ probe: { cidr: '10.77.0.0/25', maxAddresses: 4096 } }).probe.cidr, '10.77.0.0/25');
});

test('plugin — declares the ip-discovery capability and its strategy module', () => {
  assert.equal(plugin.name, 'ip-discovery-arp');
  assert.equal(plugin.version, '1.0.0');
  assert.equal(plugin.api, '^1.7.0');
  assert.deepEqual(plugin.provides, ['ip-discovery']);
  assert.equal(String(plugin.capabilityModules?.['ip-discovery']), new URL('../../../plugins/ip-discovery-arp/strategy.ts', import.meta.url).href);
});

test('probe targets — the bridge subnet from real ip -j addr output, IPv4 only', async () => {
  const subnets = parseBridgeSubnets(await readFile(new URL('./fixtures/ip-addr.json', import.meta.url), 'utf8'));
  assert.deepEqual(subnets, [{ address: '10.77.0.1', prefixLength: 24 }]);
});

test('probe targets — a /24: .2 to .254, never the network, broadcast or bridge address', () => {
  const targets = probeTargets([{ address: '10.77.0.1', prefixLength: 24 }], { maxAddresses: 4096 }, 'br0');
  assert.equal(targets.length, 253);
  assert.equal(targets[0], '10.77.0.2');
  assert.equal(targets.at(-1), '10.77.0.254');
  for (const never of ['10.77.0.0', '10.77.0.1', '10.77.0.255']) assert.ok(!targets.includes(never), never);
});

test('probe targets — never more than maxAddresses, lowest first, also for a /16', () => {
  assert.deepEqual(probeTargets([{ address: '10.77.0.1', prefixLength: 24 }], { maxAddresses: 3 }, 'br0'), ['10.77.0.2', '10.77.0.3', '10.77.0.4']);
  const big = probeTargets([{ address: '172.16.5.9', prefixLength: 16 }], { maxAddresses: 4096 }, 'br0');
  assert.equal(big.length, 4096);
  assert.equal(big[0], '172.16.0.1');
  assert.ok(!big.includes('172.16.5.9'));
});

test('probe targets — cidr narrows to a range inside the subnet (its own ends are hosts of the subnet)', () => {
  const targets = probeTargets([{ address: '10.77.0.1', prefixLength: 24 }], { maxAddresses: 256, cidr: '10.77.0.128/25' }, 'br0');
  assert.equal(targets.length, 127);
  assert.equal(targets[0], '10.77.0.128');
  assert.equal(targets.at(-1), '10.77.0.254');
  assert.deepEqual(probeTargets([{ address: '10.77.0.1', prefixLength: 24 }], { maxAddresses: 256, cidr: '10.77.0.0/30' }, 'br0'), ['10.77.0.2', '10.77.0.3']);
});

test('probe targets — a cidr outside every bridge subnet is ARP_PROBE_INVALID', () => {
  assert.throws(
    () => probeTargets([{ address: '10.77.0.1', prefixLength: 24 }], { maxAddresses: 256, cidr: '192.168.1.0/24' }, 'br0'),
    (error: unknown) => error instanceof CloudletError && error.code === 'ARP_PROBE_INVALID' && /10\.77\.0\.0\/24/.test(error.message),
  );
  assert.throws(() => probeTargets([{ address: '10.77.0.1', prefixLength: 24 }], { maxAddresses: 256, cidr: '10.77.0.0/23' }, 'br0'), /not inside/);
  assert.throws(() => probeTargets([], { maxAddresses: 256, cidr: '10.77.0.0/24' }, 'br0'), /\(none\)/);
  // Before, a cidr inside a /31 bridge subnet was said to be "not inside" it.
  assert.deepEqual(probeTargets([{ address: '10.0.0.0', prefixLength: 31 }], { maxAddresses: 256, cidr: '10.0.0.0/31' }, 'br0'), []);
  assert.deepEqual(probeTargets([{ address: '10.0.0.1', prefixLength: 32 }], { maxAddresses: 256, cidr: '10.0.0.1/32' }, 'br0'), []);
});

test('probe targets — /31, /32 and address-less bridges give nothing; two subnets are both swept, each address once', () => {
  assert.deepEqual(probeTargets([{ address: '10.0.0.0', prefixLength: 31 }, { address: '10.0.1.1', prefixLength: 32 }], { maxAddresses: 256 }, 'br0'), []);
  assert.deepEqual(probeTargets([], { maxAddresses: 256 }, 'br0'), []);
  const two = probeTargets(
    [
      { address: '10.0.0.1', prefixLength: 30 },
      { address: '10.0.0.2', prefixLength: 30 },
      { address: '192.168.7.1', prefixLength: 29 },
    ],
    { maxAddresses: 256 },
    'br0',
  );
  assert.deepEqual(two, ['192.168.7.2', '192.168.7.3', '192.168.7.4', '192.168.7.5', '192.168.7.6']);
});
