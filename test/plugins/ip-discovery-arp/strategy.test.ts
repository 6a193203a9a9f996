/**
 * The strategy with a stand-in `ip` that prints captured output: which bridge it reads, errors, the
 * /proc/net/arp fallback and waitForChange. Probing sends real datagrams, so it is tested inside a namespace
 * (probe.test.ts and test/e2e/ip-discovery-arp.test.ts); here only the cases that must not probe.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { IpDiscoveryContext } from '../../../core/capabilities/ip-discovery.ts';
import { CloudletError } from '../../../core/errors.ts';
import type { PluginLogger } from '../../../core/plugin-api.ts';
import strategy from '../../../plugins/ip-discovery-arp/strategy.ts';
import { readNeighbourTable } from '../../../plugins/ip-discovery-arp/table.ts';
import { fakeIp } from './fake-ip.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const VM = { vm: 'h1.abcdefgh', mac: '02:AA:00:00:00:11' };

function recordingLog(): PluginLogger & { lines: { level: string; msg: string }[] } {
  const lines: { level: string; msg: string }[] = [];
  const at = (level: string) => (obj: object | string, msg?: string) => lines.push({ level, msg: msg ?? String(obj) });
  return { lines, trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

function context(options: unknown, log = recordingLog()): IpDiscoveryContext & { log: ReturnType<typeof recordingLog> } {
  return { options, signal: AbortSignal.timeout(30_000), log };
}

/** An `ip` that logs each call and answers neigh/addr for bridge br0 (or "$IPBRIDGE") from fixtures. */
async function ipWithFixtures(t: TestContext, neighFixture = 'ip-s-neigh-later.json') {
  const ip = await fakeIp(
    t,
    `echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  "-s -j neigh show dev br0 nud all"|"-s -j neigh show dev virbr1 nud all") cat '${fixture(neighFixture)}' ;;
  "-j addr show dev br0") cat '${fixture('ip-addr.json')}' ;;
  *) echo "Cannot find device \\"$6\\"" >&2; exit 1 ;;
esac`,
  );
  return { ...ip, calls: async () => (await readFile(join(ip.dir, 'calls'), 'utf8').catch(() => '')).trim().split('\n').filter(Boolean) };
}

test('strategy — reads the bridge from the option, which wins over the one the caller names', async (t) => {
  const ip = await ipWithFixtures(t);
  const found = await strategy.discover({ ...VM, bridge: 'virbr1' }, context({ bridge: 'br0', ipBinary: ip.path }));
  assert.deepEqual(await ip.calls(), ['-s -j neigh show dev br0 nud all']);
  assert.deepEqual(
    found.map((a) => [a.address, a.scope, a.detail?.state, a.detail?.bridge]),
    [
      ['10.77.0.11', 'global', 'REACHABLE', 'br0'],
      ['fe80::aa:ff:fe00:11', 'link-local', 'REACHABLE', 'br0'],
      ['2001:db8:77::11', 'global', 'STALE', 'br0'],
    ],
  );
  assert.equal(found[0]?.ageMs, 4000);
});

test("strategy — without the option, uses the caller's vm.bridge", async (t) => {
  const ip = await ipWithFixtures(t);
  const found = await strategy.discover({ ...VM, bridge: 'virbr1' }, context({ ipBinary: ip.path }));
  assert.deepEqual(await ip.calls(), ['-s -j neigh show dev virbr1 nud all']);
  assert.equal(found[0]?.address, '10.77.0.11');
});

test('strategy — with no bridge from either side, or an invalid one from the caller, ARP_NO_BRIDGE', async () => {
  await assert.rejects(strategy.discover(VM, context({})), (error: unknown) => {
    assert.ok(error instanceof CloudletError);
    assert.equal(error.code, 'ARP_NO_BRIDGE');
    assert.equal(error.retryable, false);
    assert.match(error.message, /h1\.abcdefgh.*options\.bridge/);
    return true;
  });
  await assert.rejects(strategy.discover({ ...VM, bridge: 'br0 nud all' }, context({})), { code: 'ARP_NO_BRIDGE', message: /not a valid interface name/ });
  await assert.rejects(strategy.waitForChange!(VM, { ...context({}), timeoutMs: 10 }), { code: 'ARP_NO_BRIDGE' });
});

test('strategy — includeStale false, FAILED entries and an unknown MAC', async (t) => {
  const ip = await ipWithFixtures(t);
  const options = { bridge: 'br0', ipBinary: ip.path };
  assert.deepEqual(
    (await strategy.discover(VM, context({ ...options, includeStale: false }))).map((a) => a.address),
    ['10.77.0.11', 'fe80::aa:ff:fe00:11'],
  );
  assert.deepEqual(await strategy.discover({ ...VM, mac: '02:aa:00:00:00:14' }, context(options)), []);
  assert.deepEqual(await strategy.discover({ ...VM, mac: '02:00:00:00:00:99' }, context(options)), []);
});

test('strategy — a bridge ip cannot find is ARP_READ_FAILED (retryable), with what ip said', async (t) => {
  const ip = await ipWithFixtures(t);
  await assert.rejects(strategy.discover(VM, context({ bridge: 'nosuch0', ipBinary: ip.path })), (error: unknown) => {
    assert.ok(error instanceof CloudletError);
    assert.equal(error.code, 'ARP_READ_FAILED');
    assert.equal(error.retryable, true);
    assert.match(error.message, /Cannot find device "nosuch0"/);
    return true;
  });
});

test('strategy — bad options are PLUGIN_OPTIONS_INVALID', async () => {
  await assert.rejects(strategy.discover(VM, context({ bridge: 'br0', probe: { maxAddresses: 100_000 } })), { code: 'PLUGIN_OPTIONS_INVALID', message: /maxAddresses/ });
});

test('strategy — probing is skipped when the MAC already has an IPv4 entry', async (t) => {
  const ip = await ipWithFixtures(t);
  const found = await strategy.discover(VM, context({ bridge: 'br0', ipBinary: ip.path, probe: { enabled: true } }));
  assert.equal(found[0]?.address, '10.77.0.11');
  assert.deepEqual(await ip.calls(), ['-s -j neigh show dev br0 nud all'], 'no addr lookup, no sweep');
});

test('strategy — a passive caller (list-vms) gets the table as it is: no probe even with probing on', async (t) => {
  // The bridge address lookup fails here, so even a regression that probed would send nothing from this
  // (the host's) namespace; the recorded calls tell whether a probe was attempted at all.
  const ip = await fakeIp(t, 'echo "$*" >> "$(dirname "$0")/calls"; case "$*" in *neigh*) echo "[]" ;; *) echo "addr: not here" >&2; exit 2 ;; esac');
  const calls = async () => (await readFile(join(ip.dir, 'calls'), 'utf8')).trim().split('\n');
  const options = { bridge: 'br0', ipBinary: ip.path, probe: { enabled: true } };
  assert.deepEqual(await strategy.discover(VM, { ...context(options), passive: true }), []);
  assert.deepEqual(await calls(), ['-s -j neigh show dev br0 nud all'], 'no addr lookup: no probe');
  // Asked actively, the same strategy goes for the bridge addresses to probe (and gives up here).
  assert.deepEqual(await strategy.discover(VM, context(options)), []);
  assert.ok((await calls()).includes('-j addr show dev br0'), JSON.stringify(await calls()));
});

test('strategy — probing is skipped (with a warning) when the bridge addresses cannot be read', async (t) => {
  const ip = await fakeIp(t, 'case "$*" in *neigh*) echo "[]" ;; *) echo "addr: boom" >&2; exit 2 ;; esac');
  const ctx = context({ bridge: 'br0', ipBinary: ip.path, probe: { enabled: true } });
  assert.deepEqual(await strategy.discover(VM, ctx), []);
  assert.ok(ctx.log.lines.some((l) => l.level === 'warn' && /not probing.*boom/.test(l.msg)), JSON.stringify(ctx.log.lines));
});

test('table — an ip without -j falls back to /proc/net/arp (IPv4 only), with a warning', async (t) => {
  const ip = await fakeIp(t, 'echo \'Option "-j" is unknown, try "ip -help".\' >&2; exit 255');
  const log = recordingLog();
  const table = await readNeighbourTable({ ipBinary: ip.path, bridge: 'br0', signal: AbortSignal.timeout(10_000), log, procArpPath: fixture('proc-net-arp.txt') });
  assert.equal(table.source, 'proc-net-arp');
  assert.deepEqual(
    table.entries.filter((e) => e.freshness !== 'unusable').map((e) => [e.address, e.state]),
    [
      ['10.77.0.11', 'COMPLETE'],
      ['10.77.0.13', 'PERMANENT'],
      ['10.77.0.12', 'COMPLETE'],
    ],
  );
  assert.ok(log.lines.some((l) => l.level === 'warn' && /does not know -j/.test(l.msg)));
  const missing = await readNeighbourTable({ ipBinary: '/nonexistent/ip', bridge: 'br0', signal: AbortSignal.timeout(10_000), log, procArpPath: fixture('proc-net-arp.txt') });
  assert.equal(missing.source, 'proc-net-arp');
  await assert.rejects(
    readNeighbourTable({ ipBinary: '/nonexistent/ip', bridge: 'br0', signal: AbortSignal.timeout(10_000), log, procArpPath: '/nonexistent/arp' }),
    { code: 'ARP_READ_FAILED' },
  );
});

test('strategy — waitForChange resolves when ip monitor names the MAC', async (t) => {
  const ip = await fakeIp(t, "sleep 0.2; echo '10.77.0.11 lladdr 02:aa:00:00:00:11 REACHABLE'; exec sleep 60");
  const started = performance.now();
  await strategy.waitForChange!(VM, { ...context({ bridge: 'br0', ipBinary: ip.path }), timeoutMs: 10_000 });
  assert.ok(performance.now() - started < 5_000);
});

test('strategy — waitForChange wakes at once for an entry that appeared before ip monitor listened (lost wake-up)', async (t) => {
  // The monitor never reports anything; the table already holds the VM (it appeared between the caller's last
  // read and the monitor's start). Waiting must end now, not when the 30 s slice runs out.
  const ip = await fakeIp(
    t,
    `case "$*" in
  *monitor*) exec sleep 60 ;;
  "-s -j neigh show dev br0 nud all") cat '${fixture('ip-s-neigh-later.json')}' ;;
  *) exit 1 ;;
esac`,
  );
  const started = performance.now();
  await strategy.waitForChange!(VM, { ...context({ bridge: 'br0', ipBinary: ip.path }), timeoutMs: 30_000 });
  assert.ok(performance.now() - started < 10_000, 'waited for the slice instead of reading the table again');
});

test('strategy — waitForChange without a working ip monitor wakes the caller within a second, with a warning', async () => {
  const ctx = context({ bridge: 'br0', ipBinary: '/nonexistent/ip' });
  const started = performance.now();
  await strategy.waitForChange!(VM, { ...ctx, timeoutMs: 30_000 });
  const took = performance.now() - started;
  assert.ok(took >= 900 && took < 5_000, `${took} ms`);
  assert.ok(ctx.log.lines.some((l) => l.level === 'warn' && /caller will poll/.test(l.msg)));
});

test('strategy — the asks of one list (a shared memo) read the neighbour table of a bridge once', async (t) => {
  const ip = await ipWithFixtures(t);
  const shared = new Map<string, Promise<unknown>>();
  const listContext = { ...context({ bridge: 'br0', ipBinary: ip.path }), passive: true, shared };
  const found = await Promise.all([VM, { vm: 'h1.bbbbbbbb', mac: '02:aa:00:00:00:99' }, VM].map((vm) => strategy.discover(vm, listContext)));
  assert.deepEqual(await ip.calls(), ['-s -j neigh show dev br0 nud all']);
  assert.deepEqual(found.map((addresses) => addresses.map((a) => a.address)), [
    ['10.77.0.11', 'fe80::aa:ff:fe00:11', '2001:db8:77::11'],
    [],
    ['10.77.0.11', 'fe80::aa:ff:fe00:11', '2001:db8:77::11'],
  ]);
  // Without the memo (one VM's ask), each ask reads the table as it is.
  await strategy.discover(VM, context({ bridge: 'br0', ipBinary: ip.path }));
  assert.equal((await ip.calls()).length, 2);
});

test('strategy — waitForChange is not ended by link-local entries, which the caller does not report', async (t) => {
  // Before, the read after ip monitor started ended the wait for any entry of the VM: with only fe80:: and
  // 169.254 entries, every wait ended at once and its caller started the next one, thousands a minute.
  const ip = await fakeIp(
    t,
    `echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *monitor*) exec sleep 60 ;;
  "-s -j neigh show dev br0 nud all") echo '[{"dst":"fe80::aa:ff:fe00:11","lladdr":"02:aa:00:00:00:11","state":["STALE"]},{"dst":"169.254.7.7","lladdr":"02:aa:00:00:00:11","state":["REACHABLE"]}]' ;;
  *) exit 1 ;;
esac`,
  );
  const started = performance.now();
  await strategy.waitForChange!(VM, { ...context({ bridge: 'br0', ipBinary: ip.path }), timeoutMs: 1_500 });
  assert.ok(performance.now() - started >= 1_400, 'the wait ended before its time');
  const calls = (await readFile(join(ip.dir, 'calls'), 'utf8')).trim().split('\n');
  assert.deepEqual(calls.sort(), ['-s -j neigh show dev br0 nud all', 'monitor neigh dev br0'].sort());
});
