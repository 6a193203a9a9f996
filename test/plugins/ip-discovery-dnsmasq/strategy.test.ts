import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import type { IpDiscoveryContext, VmNetworkIdentity } from '../../../core/capabilities/ip-discovery.ts';
import type { PluginLogger } from '../../../core/plugin-api.ts';
import { dnsmasqOptionsSchema, type DnsmasqOptions } from '../../../plugins/ip-discovery-dnsmasq/options.ts';
import strategy, { leaseAgeMs } from '../../../plugins/ip-discovery-dnsmasq/strategy.ts';
import { tempDir } from '../../helpers.ts';

interface LogRecord {
  level: string;
  obj: object | string;
  msg?: string;
}

function recordingLogger(): { log: PluginLogger; records: LogRecord[] } {
  const records: LogRecord[] = [];
  const at = (level: string) => (obj: object | string, msg?: string) => void records.push({ level, obj, msg });
  return { log: { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, records };
}

function contextFor(rawOptions: unknown, signal = new AbortController().signal) {
  const { log, records } = recordingLogger();
  const context: IpDiscoveryContext<DnsmasqOptions> = { options: dnsmasqOptionsSchema.parse(rawOptions), signal, log };
  return { context, records };
}

const vm = (mac: string): VmNetworkIdentity => ({ vm: 'h1.abcdefgh', mac, bridge: 'br0' });

async function leaseDir(t: TestContext): Promise<{ dir: string; file: string }> {
  const dir = await tempDir(t, 'cloudlet-dnsmasq-');
  return { dir, file: join(dir, 'dnsmasq.leases') };
}

test('strategy — discover reports the VM’s IPv4 and IPv6 leases with source, scope, expiry and age', async (t) => {
  const { file } = await leaseDir(t);
  const expiry = Math.floor(Date.now() / 1000) + 3000; // written ~600 s ago with a 3600 s lease time
  await writeFile(
    file,
    [
      `${expiry} 52:54:00:aa:bb:01 10.77.0.11 vm-one 01:52:54:00:aa:bb:01`,
      `${expiry} 52:54:00:aa:bb:02 10.77.0.12 * *`,
      'duid 00:01:00:01:2c:aa:bb:cc:0a:0b:0c:0d:0e:0f',
      `${expiry} 1234 fd00:77::11 vm-one 00:03:00:01:52:54:00:aa:bb:01`,
      '',
    ].join('\n'),
  );
  const { context, records } = contextFor({ leaseFile: file, leaseTimeSeconds: 3600 });
  const found = await strategy.discover(vm('52:54:00:AA:BB:01'), context);
  assert.deepEqual(
    found.map((a) => [a.address, a.family, a.scope, a.source]),
    [
      ['10.77.0.11', 'ipv4', 'global', 'ip-discovery-dnsmasq'],
      ['fd00:77::11', 'ipv6', 'global', 'ip-discovery-dnsmasq'],
    ],
  );
  const [v4, v6] = found;
  assert.ok(v4!.ageMs !== null && Math.abs(v4!.ageMs - 600_000) < 2_000, `age about 600 s, got ${v4!.ageMs}`);
  assert.deepEqual(v4!.detail, {
    leaseFile: file,
    expiresAt: new Date(expiry * 1000).toISOString(),
    hostname: 'vm-one',
    clientId: '01:52:54:00:aa:bb:01',
  });
  assert.equal(v6!.detail?.iaid, 1234);
  assert.equal(v6!.detail?.temporary, false);
  assert.deepEqual(records, [], 'a clean file logs nothing');
  // JSON-safe: the result crosses the worker boundary.
  assert.deepEqual(JSON.parse(JSON.stringify(found)), found);
});

test('strategy — ageMs: from the lease time when known (managed mode knows it), null otherwise or for infinite leases', async (t) => {
  const now = Date.now();
  assert.equal(leaseAgeMs({ expiry: Math.floor(now / 1000) + 100 }, null, now), null);
  assert.equal(leaseAgeMs({ expiry: 0 }, 3600, now), null);
  assert.equal(leaseAgeMs({ expiry: now / 1000 + 3600 }, 3600, now), 0);
  assert.equal(leaseAgeMs({ expiry: now / 1000 + 7200 }, 3600, now), 0, 'clamped: a lease longer than the configured time is not from the future');
  assert.equal(leaseAgeMs({ expiry: now / 1000 + 600 }, 3600, now), 3_000_000);

  const { file } = await leaseDir(t);
  await writeFile(file, `${Math.floor(now / 1000) + 40_000} 52:54:00:aa:bb:01 10.77.0.11 * *\n0 52:54:00:aa:bb:02 10.77.0.12 * *\n`);
  const managed = contextFor({ leaseFile: file, managed: { bridge: 'br0', rangeStart: '10.77.0.10', rangeEnd: '10.77.0.20', leaseTime: '12h' } });
  const [fromManaged] = await strategy.discover(vm('52:54:00:aa:bb:01'), managed.context);
  assert.ok(fromManaged!.ageMs !== null && Math.abs(fromManaged!.ageMs - 3_200_000) < 2_000, `12h lease: age ~3200 s, got ${fromManaged!.ageMs}`);
  const [unknownTime] = await strategy.discover(vm('52:54:00:aa:bb:01'), contextFor({ leaseFile: file }).context);
  assert.equal(unknownTime!.ageMs, null);
  const [infinite] = await strategy.discover(vm('52:54:00:aa:bb:02'), managed.context);
  assert.equal(infinite!.ageMs, null);
  assert.equal(infinite!.detail?.expiresAt, null);
});

test('strategy — no file yet, or no lease for the MAC: an empty list, nothing thrown or logged', async (t) => {
  const { dir, file } = await leaseDir(t);
  const { context, records } = contextFor({ leaseFile: join(dir, 'missing', 'dnsmasq.leases') });
  assert.deepEqual(await strategy.discover(vm('52:54:00:aa:bb:01'), context), []);
  await writeFile(file, `${Math.floor(Date.now() / 1000) + 60} 52:54:00:aa:bb:09 10.77.0.19 * *\n`);
  assert.deepEqual(await strategy.discover(vm('52:54:00:aa:bb:01'), contextFor({ leaseFile: file }).context), []);
  assert.deepEqual(records, []);
});

test('strategy — malformed lines are skipped with one warning through ctx.log; the good leases still count', async (t) => {
  const { file } = await leaseDir(t);
  const expiry = Math.floor(Date.now() / 1000) + 60;
  await writeFile(file, `junk\n${expiry} 52:54:00:aa:bb:01 10.77.0.11 * *\n1 2 3\n${expiry} nonsense 10.77.0.12 * *\n`);
  const { context, records } = contextFor({ leaseFile: file });
  assert.deepEqual((await strategy.discover(vm('52:54:00:aa:bb:01'), context)).map((a) => a.address), ['10.77.0.11']);
  assert.equal(records.length, 1);
  assert.equal(records[0]!.level, 'warn');
  assert.match(records[0]!.msg ?? '', /skipped 3 malformed line/);
  const obj = records[0]!.obj as { count: number; skipped: { line: number }[]; leaseFile: string };
  assert.equal(obj.count, 3);
  assert.deepEqual(obj.skipped.map((s) => s.line), [1, 3, 4]);
  assert.equal(obj.leaseFile, file);
});

test('strategy — a lease file that cannot be read is an error with a code, not "no address"', async (t) => {
  const { file } = await leaseDir(t);
  await mkdir(file); // reading a folder fails with EISDIR (root reads any file, so no EACCES here)
  const { context } = contextFor({ leaseFile: file });
  await assert.rejects(strategy.discover(vm('52:54:00:aa:bb:01'), context), (error: { code: string; details: { leaseFile: string; errno: string } }) => {
    assert.equal(error.code, 'DNSMASQ_LEASES_UNREADABLE');
    assert.deepEqual(error.details, { leaseFile: file, errno: 'EISDIR' });
    return true;
  });
});

test('strategy — a lease file that is a FIFO or a device is refused at once, not read until someone writes', { timeout: 20_000 }, async (t) => {
  // Before, readFile on a FIFO blocked (a thread of libuv's pool with it) until a writer came, and
  // aborting did not end it: get-vm-ip hung to its timeout, and list-vms with it.
  const { file } = await leaseDir(t);
  execFileSync('mkfifo', [file]);
  for (const [leaseFile, kind] of [[file, 'FIFO'], ['/dev/zero', 'character device']] as const) {
    const { context } = contextFor({ leaseFile });
    await assert.rejects(strategy.discover(vm('52:54:00:aa:bb:01'), context), (error: { code: string; message: string; details: { leaseFile: string } }) => {
      assert.equal(error.code, 'DNSMASQ_LEASES_UNREADABLE');
      assert.equal(error.details.leaseFile, leaseFile);
      assert.match(error.message, new RegExp(`is a ${kind}, not a regular file`));
      return true;
    });
  }
});

test('strategy — waitForChange resolves when the lease file is written, and discover then sees the lease', async (t) => {
  const { file } = await leaseDir(t);
  const { context } = contextFor({ leaseFile: file });
  const mac = '52:54:00:aa:bb:01';
  assert.deepEqual(await strategy.discover(vm(mac), context), []);
  // A long timeout, and the wait must end well before it: a watch that noticed nothing would end at its
  // timeout too, and discover would then find the lease all the same.
  const timeoutMs = 30_000;
  const waitStarted = performance.now();
  const waiting = strategy.waitForChange!(vm(mac), { ...context, timeoutMs });
  await new Promise((resolve) => setTimeout(resolve, 5));
  await writeFile(`${file}.new`, `${Math.floor(Date.now() / 1000) + 60} ${mac} 10.77.0.11 * *\n`);
  await rename(`${file}.new`, file);
  const renamedAt = performance.now();
  await waiting;
  assert.ok(performance.now() - waitStarted < timeoutMs / 2, 'the wait ended at its timeout: the rename was not noticed');
  const found = await strategy.discover(vm(mac), context);
  t.diagnostic(`rename → waitForChange + discover: ${(performance.now() - renamedAt).toFixed(1)} ms`);
  assert.deepEqual(found.map((a) => a.address), ['10.77.0.11']);
});

test('strategy — waitForChange resolves at the timeout and on abort', async (t) => {
  const { file } = await leaseDir(t);
  const controller = new AbortController();
  const { context } = contextFor({ leaseFile: file }, controller.signal);
  const started = performance.now();
  await strategy.waitForChange!(vm('52:54:00:aa:bb:01'), { ...context, timeoutMs: 50 });
  assert.ok(performance.now() - started >= 45);
  const waiting = strategy.waitForChange!(vm('52:54:00:aa:bb:01'), { ...context, timeoutMs: 60_000 });
  controller.abort();
  // Abort, not the 60 s timeout, must end it (a did-not-hang bound, far from both).
  let timer: NodeJS.Timeout | undefined;
  const ended = await Promise.race([waiting.then(() => true), new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), 10_000)))]);
  clearTimeout(timer);
  assert.ok(ended, 'waitForChange ignored the abort');
});

test('strategy — the asks of one list (a shared memo) read and parse the lease file once, and warn about bad lines once', async (t) => {
  const { file } = await leaseDir(t);
  const expiry = Math.floor(Date.now() / 1000) + 3000;
  await writeFile(file, `${expiry} 52:54:00:aa:bb:01 10.77.0.11 * *\nnot a lease line\n${expiry} 52:54:00:aa:bb:02 10.77.0.12 * *\n`);
  const { log, records } = recordingLogger();
  const shared = new Map<string, Promise<unknown>>();
  const context: IpDiscoveryContext<DnsmasqOptions> = { options: dnsmasqOptionsSchema.parse({ leaseFile: file }), signal: new AbortController().signal, log, shared };
  const first = await strategy.discover(vm('52:54:00:aa:bb:01'), context);
  // Changed after the list's first ask: the same list still answers from the one read it made.
  await writeFile(file, `${expiry} 52:54:00:aa:bb:02 10.77.0.99 * *\n`);
  const second = await strategy.discover(vm('52:54:00:aa:bb:02'), context);
  assert.deepEqual([first.map((a) => a.address), second.map((a) => a.address)], [['10.77.0.11'], ['10.77.0.12']]);
  assert.equal(records.filter((r) => r.level === 'warn').length, 1);
  // A single VM's ask (no memo) reads the file as it is now.
  const alone = await strategy.discover(vm('52:54:00:aa:bb:02'), contextFor({ leaseFile: file }).context);
  assert.deepEqual(alone.map((a) => a.address), ['10.77.0.99']);
});
