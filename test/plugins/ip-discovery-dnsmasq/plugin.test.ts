import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import test from 'node:test';
import { checkHostConfig } from '../../../core/config/host-config.ts';
import { rawConfigFrom } from '../../../core/config/load.ts';
import plugin from '../../../plugins/ip-discovery-dnsmasq/index.ts';
import { dnsmasqOptionsSchema, leaseTimeToSeconds } from '../../../plugins/ip-discovery-dnsmasq/options.ts';
import { dnsmasqArgv } from '../../../plugins/ip-discovery-dnsmasq/managed-dnsmasq.ts';
import { rangeProblem } from '../../../plugins/ip-discovery-dnsmasq/hooks.ts';

const pluginPath = fileURLToPath(new URL('../../../plugins/ip-discovery-dnsmasq/index.ts', import.meta.url));
const managed = { bridge: 'br0', rangeStart: '10.77.0.10', rangeEnd: '10.77.0.200' };

async function check(options: unknown) {
  return checkHostConfig(rawConfigFrom({ host: { id: 'h1' }, plugins: [{ use: pluginPath, options }] }, '/etc/cloudlet/cloudlet.yaml'));
}

test('plugin — passes the loader’s checks and offers its strategy module for ip-discovery', async () => {
  const result = await check({ leaseFile: '/var/lib/misc/dnsmasq.leases' });
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  const loaded = result.config.plugins.find((p) => p.plugin.name === 'ip-discovery-dnsmasq');
  assert.deepEqual(loaded?.plugin.provides, ['ip-discovery']);
  assert.equal(plugin.api, '^1.7.0');
  const module = String(plugin.capabilityModules?.['ip-discovery']);
  assert.match(module, /^file:.*\/plugins\/ip-discovery-dnsmasq\/strategy\.ts$/);
  const strategy = ((await import(module)) as { default: { discover: unknown; waitForChange: unknown } }).default;
  assert.equal(typeof strategy.discover, 'function');
  assert.equal(typeof strategy.waitForChange, 'function');
  // Options travel to worker threads by structured clone: plain data only.
  assert.deepEqual(structuredClone(loaded?.options), loaded?.options);
});

test('options — bad values are refused at load with their path and a clear message', async () => {
  const result = await check({
    leaseFile: 'leases.txt',
    managed: { bridge: 'a-bridge-name-too-long', rangeStart: '10.77.0.256', rangeEnd: 'ten', leaseTime: '90s', extraFlags: ['--dhcp-script=/tmp/x'] },
    leaseTimeSeconds: -1,
    polling: true,
  });
  assert.ok(!result.ok);
  const byPath = Object.fromEntries(result.problems.map((p) => [p.path, `${p.code}: ${p.message} ${p.allowed ?? ''}`]));
  const prefix = 'plugins[0].options';
  assert.match(byPath[`${prefix}.leaseFile`] ?? '', /PLUGIN_OPTIONS_INVALID.*absolute file path/);
  assert.match(byPath[`${prefix}.managed.bridge`] ?? '', /15/);
  assert.match(byPath[`${prefix}.managed.rangeStart`] ?? '', /IPv4 address/);
  assert.match(byPath[`${prefix}.managed.rangeEnd`] ?? '', /IPv4 address/);
  assert.match(byPath[`${prefix}.managed.leaseTime`] ?? '', /at least 2m/);
  assert.match(byPath[`${prefix}.managed.extraFlags[0]`] ?? '', /--log-dhcp/);
  assert.match(byPath[`${prefix}.leaseTimeSeconds`] ?? '', /too small/);
  assert.match(byPath[prefix] ?? '', /polling/);
});

test('options — leaseFile is required unless managed; managed mode defaults it per bridge', () => {
  const missing = dnsmasqOptionsSchema.safeParse({});
  assert.ok(!missing.success);
  assert.deepEqual(missing.error.issues.map((i) => [i.path.join('.'), i.message]), [
    ['leaseFile', 'required unless "managed" is set (managed mode defaults it to /var/lib/cloudlet/dnsmasq/<bridge>.leases)'],
  ]);
  assert.deepEqual(dnsmasqOptionsSchema.parse({ managed }), {
    managed: { ...managed, leaseTime: '1h', dnsmasqBinary: 'dnsmasq', extraFlags: [] },
    leaseFile: '/var/lib/cloudlet/dnsmasq/br0.leases',
  });
  assert.equal(dnsmasqOptionsSchema.parse({ managed, leaseFile: '/run/x.leases' }).leaseFile, '/run/x.leases');
});

test('options — the range must not run backwards; lease times in dnsmasq syntax', () => {
  const backwards = dnsmasqOptionsSchema.safeParse({ managed: { ...managed, rangeStart: '10.77.0.200', rangeEnd: '10.77.0.10' } });
  assert.ok(!backwards.success);
  assert.deepEqual(backwards.error.issues.map((i) => i.path.join('.')), ['managed.rangeEnd']);
  for (const good of ['2m', '120', '12h', '1d', '2w', '3650d', '521w', 'infinite']) assert.ok(dnsmasqOptionsSchema.safeParse({ managed: { ...managed, leaseTime: good } }).success, good);
  // dnsmasq keeps a lease time in 32 bits: these came out as 31m44s and 2m, and every lease age was wrong.
  for (const huge of ['1193047h', '71582789m', '3651d', '999999999w']) {
    const result = dnsmasqOptionsSchema.safeParse({ managed: { ...managed, leaseTime: huge } });
    assert.ok(!result.success, huge);
    assert.match(result.error.issues[0]?.message ?? '', /^at most 3650d \(10 years\): use "infinite" for longer/, huge);
  }
  for (const bad of ['1m', '119', '12 h', '-1h', '1y', '', 'forever']) assert.ok(!dnsmasqOptionsSchema.safeParse({ managed: { ...managed, leaseTime: bad } }).success, bad);
  assert.deepEqual(['12h', '90m', '3600', '1w', 'infinite'].map(leaseTimeToSeconds), [43_200, 5_400, 3_600, 604_800, null]);
});

test('options — only DHCP-tuning extra flags are allowed', () => {
  const ok = ['--log-dhcp', '--dhcp-option=option:dns-server,10.77.0.1', '--dhcp-range=fd00:77::10,fd00:77::ff,64,1h', '--enable-ra'];
  assert.ok(dnsmasqOptionsSchema.safeParse({ managed: { ...managed, extraFlags: ok } }).success);
  for (const bad of ['--dhcp-script=/bin/sh', '--conf-file=/etc/passwd', '--port=53', '--interface=eth0', '--user=root', '--log-dhcp --port=53', '--dhcp-option', 'log-dhcp']) {
    assert.ok(!dnsmasqOptionsSchema.safeParse({ managed: { ...managed, extraFlags: [bad] } }).success, bad);
  }
});

test('managed — dnsmasq argv: DHCP only, on the bridge only, no shell, extra flags last', () => {
  const options = dnsmasqOptionsSchema.parse({ managed: { ...managed, leaseTime: '12h', extraFlags: ['--log-dhcp'] } });
  assert.deepEqual(dnsmasqArgv(options.managed!, options.leaseFile), [
    'dnsmasq',
    '--no-daemon',
    '--conf-file=/dev/null',
    '--interface=br0',
    '--bind-interfaces',
    '--except-interface=lo',
    '--dhcp-range=10.77.0.10,10.77.0.200,12h',
    '--dhcp-authoritative',
    '--no-ping',
    '--dhcp-leasefile=/var/lib/cloudlet/dnsmasq/br0.leases',
    '--no-resolv',
    '--no-hosts',
    '--port=0',
    '--log-facility=-',
    '--log-dhcp',
  ]);
});

test('managed — a range outside every subnet of the bridge is reported before dnsmasq ignores requests', () => {
  const options = dnsmasqOptionsSchema.parse({ managed }).managed!;
  const bridge = (address: string, netmask: string) => ({
    br0: [{ address, netmask, family: 'IPv4' as const, mac: '00:00:00:00:00:00', internal: false, cidr: `${address}/24` }],
  });
  assert.equal(rangeProblem(options, bridge('10.77.0.1', '255.255.255.0')), undefined);
  assert.match(rangeProblem(options, bridge('192.168.5.1', '255.255.255.0')) ?? '', /outside the subnets of br0 \(192\.168\.5\.1\/24\)/);
  assert.match(rangeProblem(options, {}) ?? '', /br0 has no IPv4 address/);
});
