/**
 * ip-discovery-dnsmasq with the real parts: a throw-away network namespace, real dnsmasq, and the tiny test
 * guest booted under QEMU on taps of the namespace's bridge. The strategy is loaded the way qemu-backend's
 * handlers load it (loadProviders over the plugin's capability module) and must find each VM's own address,
 * the one the guest prints on its console. Managed mode runs a real agent inside the namespace, whose start
 * hook runs dnsmasq on the bridge. Prints how long after the lease was written the strategy knew it.
 */
import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test, { type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { DiscoveredAddress, IpDiscoveryContext, IpDiscoveryStrategy, VmNetworkIdentity } from '../../core/capabilities/ip-discovery.ts';
import { loadProviders, type PluginLogger } from '../../core/plugin-api.ts';
import plugin from '../../plugins/ip-discovery-dnsmasq/index.ts';
import { dnsmasqOptionsSchema, type DnsmasqOptions } from '../../plugins/ip-discovery-dnsmasq/options.ts';
import { cliBin } from '../helpers.ts';
import { startDnsmasq, withNetns, type Netns } from '../support/netns.ts';
import { ensureGuest } from '../support/qemu-host.ts';
import { bootTestGuest, guestLease, type TestGuest } from '../support/test-guest.ts';

const BOOT_TIMEOUT_MS = 90_000;
const pluginPath = fileURLToPath(new URL('../../plugins/ip-discovery-dnsmasq/index.ts', import.meta.url));

interface Guest {
  identity: VmNetworkIdentity;
  booted: TestGuest;
}

async function bootGuest(ns: Netns, name: string): Promise<Guest> {
  const booted = await bootTestGuest(ns, name);
  return { identity: { vm: `e2e.${name}`, mac: booted.mac, bridge: ns.bridge }, booted };
}

/** The address the guest itself configured, from its console. */
const guestReportedAddress = (guest: Guest) => guestLease(guest.booted, BOOT_TIMEOUT_MS);

function quietLogger(): { log: PluginLogger; warnings: unknown[] } {
  const warnings: unknown[] = [];
  const ignore = () => {};
  return { log: { trace: ignore, debug: ignore, info: ignore, warn: (obj) => void warnings.push(obj), error: (obj) => void warnings.push(obj) }, warnings };
}

/** The strategy as a handler of another plugin gets it: through the capability module the plugin declares. */
async function loadStrategy(t: TestContext, rawOptions: unknown) {
  const options = dnsmasqOptionsSchema.parse(rawOptions);
  const providers = { 'ip-discovery': [{ plugin: plugin.name, module: String(plugin.capabilityModules!['ip-discovery']), options }] };
  const [provider] = await loadProviders<IpDiscoveryStrategy<DnsmasqOptions>>({ providers }, 'ip-discovery');
  const controller = new AbortController();
  t.after(() => controller.abort());
  const { log, warnings } = quietLogger();
  const context: IpDiscoveryContext<DnsmasqOptions> = { options: provider!.options as DnsmasqOptions, signal: controller.signal, log };
  return { strategy: provider!.implementation, context, warnings };
}

/**
 * What a caller waiting for a VM's address does: ask, and when nothing is known yet, wait for a change instead
 * of polling. Resolves with the IPv4 addresses and how long after the lease file's last write they were known.
 */
async function waitForIpv4(strategy: IpDiscoveryStrategy<DnsmasqOptions>, context: IpDiscoveryContext<DnsmasqOptions>, vm: VmNetworkIdentity) {
  const deadline = Date.now() + BOOT_TIMEOUT_MS;
  for (;;) {
    const found = (await strategy.discover(vm, context)).filter((a) => a.family === 'ipv4');
    if (found.length > 0) {
      const knownAt = Date.now();
      // Measured at once: another VM's lease written later would move the file's mtime.
      return { addresses: found, latencyMs: knownAt - (await stat(context.options.leaseFile)).mtimeMs };
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no IPv4 lease for ${vm.mac} within ${BOOT_TIMEOUT_MS} ms`);
    await strategy.waitForChange!(vm, { ...context, timeoutMs: Math.min(left, 10_000) });
  }
}

function only(addresses: DiscoveredAddress[]): DiscoveredAddress {
  assert.equal(addresses.length, 1, JSON.stringify(addresses));
  return addresses[0]!;
}

test('ip-discovery-dnsmasq — finds each of two VMs’ own address in a real dnsmasq’s lease file, within ms of the write', { timeout: 240_000 }, async (t) => {
  ensureGuest();
  const ns = await withNetns(t);
  const dnsmasq = await startDnsmasq(ns);
  const { strategy, context, warnings } = await loadStrategy(t, { leaseFile: dnsmasq.leaseFile, leaseTimeSeconds: 12 * 3600 });
  const [one, two] = [await bootGuest(ns, 'vm-one'), await bootGuest(ns, 'vm-two')];

  const [foundOne, foundTwo] = await Promise.all([waitForIpv4(strategy, context, one.identity), waitForIpv4(strategy, context, two.identity)]);
  const latencies = [foundOne.latencyMs, foundTwo.latencyMs];
  const [addressOne, addressTwo] = [only(foundOne.addresses), only(foundTwo.addresses)];

  assert.equal(addressOne.address, await guestReportedAddress(one), 'vm-one: the strategy and the guest agree');
  assert.equal(addressTwo.address, await guestReportedAddress(two), 'vm-two: the strategy and the guest agree');
  assert.notEqual(addressOne.address, addressTwo.address);
  for (const found of [addressOne, addressTwo]) {
    assert.match(found.address, /^10\.77\.0\.\d+$/);
    assert.deepEqual([found.family, found.scope, found.source], ['ipv4', 'global', 'ip-discovery-dnsmasq']);
    assert.ok(found.ageMs !== null && found.ageMs >= 0 && found.ageMs < 120_000, `a fresh lease is young: ${found.ageMs} ms`);
  }
  // Asked again later, each VM still gets its own address only; a MAC no VM has gets nothing.
  assert.deepEqual((await strategy.discover(one.identity, context)).map((a) => a.address), [addressOne.address]);
  assert.deepEqual((await strategy.discover(two.identity, context)).map((a) => a.address), [addressTwo.address]);
  assert.deepEqual(await strategy.discover({ vm: 'e2e.none', mac: '52:54:00:00:00:01' }, context), []);
  assert.deepEqual(warnings, []);
  t.diagnostic(
    `lease written → strategy knew it: vm-one ${latencies[0]!.toFixed(1)} ms (${addressOne.address}), vm-two ${latencies[1]!.toFixed(1)} ms (${addressTwo.address}); budget 100 ms`,
  );
});

test('ip-discovery-dnsmasq — managed mode: the agent’s start hook runs dnsmasq on the bridge, restarts it when it dies, stops it on shutdown', { timeout: 300_000 }, async (t) => {
  ensureGuest();
  const ns = await withNetns(t);
  const leaseFile = join(ns.dir, 'dnsmasq', `${ns.bridge}.leases`);
  const options = { leaseFile, managed: { bridge: ns.bridge, rangeStart: '10.77.0.50', rangeEnd: '10.77.0.60', leaseTime: '10m' } };
  const configFile = join(ns.dir, 'cloudlet.yaml');
  await writeFile(
    configFile,
    JSON.stringify({
      host: { id: 'managed' },
      transport: { kind: 'local', socket: join(ns.dir, 'agent.sock') },
      state: { dir: join(ns.dir, 'state') },
      log: { level: 'debug', format: 'json' },
      plugins: [{ use: pluginPath, options }],
    }),
  );
  let output = '';
  const agent = ns.spawn([process.execPath, cliBin, 'agent', '--config', configFile], { env: { ...process.env, CLOUDLET_LOG_FORMAT: 'json' } });
  agent.child.stdout?.on('data', (chunk) => (output += chunk));
  agent.child.stderr?.on('data', (chunk) => (output += chunk));
  const waitForOutput = async (pattern: RegExp, what: string, timeoutMs = 30_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(output)) {
      if (agent.child.exitCode !== null) throw new Error(`the agent exited ${agent.child.exitCode} before ${what}:\n${output}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const dnsmasqPid = async () => Number((await readFile(`${leaseFile}.pid`, 'utf8').catch(() => '')).trim()) || undefined;
  const dnsmasqRunning = async () => (await ns.exec(['pgrep', '-x', 'dnsmasq'])).stdout.trim();

  await waitForOutput(/ready as host/, 'ready line');
  assert.match(output, /dnsmasq serves DHCP on the bridge/);
  const firstPid = await dnsmasqPid();
  assert.ok(firstPid, 'the supervisor recorded the pid of dnsmasq');
  assert.equal(await dnsmasqRunning(), String(firstPid), 'one dnsmasq runs in the namespace: the managed one');

  const { strategy, context } = await loadStrategy(t, options);
  const one = await bootGuest(ns, 'managed-one');
  const waited = await waitForIpv4(strategy, context, one.identity);
  const found = only(waited.addresses);
  assert.equal(found.address, await guestReportedAddress(one));
  const last = Number(found.address.split('.')[3]);
  assert.ok(found.address.startsWith('10.77.0.') && last >= 50 && last <= 60, `${found.address} is from the managed range`);
  // Managed mode knows its lease time (10m), so it can tell the lease's age.
  assert.ok(found.ageMs !== null && found.ageMs >= 0 && found.ageMs < 120_000, `age ${found.ageMs}`);

  // dnsmasq dies: the supervisor notices and starts a new one, which serves the next VM.
  await ns.run(['kill', '-KILL', String(firstPid)]);
  await waitForOutput(/dnsmasq exited; restarting it/, 'restart log line');
  const deadline = Date.now() + 20_000;
  while ((await dnsmasqPid()) === firstPid || !(await dnsmasqRunning())) {
    assert.ok(Date.now() < deadline, `dnsmasq was not restarted:\n${output}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const two = await bootGuest(ns, 'managed-two');
  const foundTwo = only((await waitForIpv4(strategy, context, two.identity)).addresses);
  assert.equal(foundTwo.address, await guestReportedAddress(two));
  assert.notEqual(foundTwo.address, found.address);

  // Shutdown: the stop hook ends dnsmasq and removes its pid file; the agent exits cleanly.
  agent.kill('SIGTERM');
  const exit = await agent.exited;
  assert.equal(exit.code, 0, output);
  assert.equal(await dnsmasqRunning(), '', 'no dnsmasq left in the namespace');
  assert.equal(await dnsmasqPid(), undefined);
  assert.match(output, /dnsmasq stopped/);
  t.diagnostic(`managed: lease written → strategy knew it ${waited.latencyMs.toFixed(1)} ms (${found.address}); after a restart ${foundTwo.address}`);
});
