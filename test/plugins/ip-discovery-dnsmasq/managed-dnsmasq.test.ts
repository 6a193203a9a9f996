/**
 * The managed-mode supervisor against stand-in dnsmasq scripts (start, crash, ignore SIGTERM); the real
 * dnsmasq, in a network namespace, is in test/e2e/ip-discovery-dnsmasq.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import type { PluginLogger } from '../../../core/plugin-api.ts';
import { ManagedDnsmasq, pidFileFor } from '../../../plugins/ip-discovery-dnsmasq/managed-dnsmasq.ts';
import { dnsmasqOptionsSchema } from '../../../plugins/ip-discovery-dnsmasq/options.ts';
import { processAlive, tempDir } from '../../helpers.ts';

interface LogRecord {
  level: string;
  obj: Record<string, unknown>;
  msg: string;
}

function recordingLogger(): { log: PluginLogger; records: LogRecord[] } {
  const records: LogRecord[] = [];
  const at = (level: string) => (obj: object | string, msg?: string) =>
    void records.push(typeof obj === 'string' ? { level, obj: {}, msg: obj } : { level, obj: obj as Record<string, unknown>, msg: msg ?? '' });
  return { log: { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, records };
}

/**
 * A stand-in for dnsmasq: creates the lease file, notes its pid in `starts`, says what real dnsmasq says once
 * it serves, then does `behaviour`.
 */
async function fakeDnsmasq(dir: string, behaviour: string, ready = true): Promise<string> {
  const script = join(dir, 'fake-dnsmasq');
  await writeFile(
    script,
    [
      '#!/bin/sh',
      'for arg in "$@"; do case "$arg" in --dhcp-leasefile=*) lease="${arg#--dhcp-leasefile=}";; esac; done',
      `echo $$ >> "${join(dir, 'starts')}"`,
      ': >> "$lease"',
      'echo "dnsmasq: started, version fake" >&2',
      ready ? 'echo "dnsmasq-dhcp: DHCP, IP range 10.77.0.10 -- 10.77.0.20, lease time 1h" >&2' : '',
      'echo "dnsmasq-dhcp: DHCPACK(br0) 10.77.0.11 52:54:00:aa:bb:01" >&2',
      behaviour,
      '',
    ].join('\n'),
  );
  await chmod(script, 0o755);
  return script;
}

async function setup(t: TestContext, behaviour: string, ready = true) {
  const dir = await tempDir(t, 'cloudlet-managed-');
  const binary = await fakeDnsmasq(dir, behaviour, ready);
  const options = dnsmasqOptionsSchema.parse({
    leaseFile: join(dir, 'leases', 'br0.leases'),
    managed: { bridge: 'br0', rangeStart: '10.77.0.10', rangeEnd: '10.77.0.20', dnsmasqBinary: binary },
  });
  const { log, records } = recordingLogger();
  const starts = async () => (await readFile(join(dir, 'starts'), 'utf8').catch(() => '')).split('\n').filter(Boolean).map(Number);
  return { dir, options, log, records, starts, settings: { managed: options.managed!, leaseFile: options.leaseFile, log } };
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const SERVE = 'while :; do sleep 0.1; done';

test('managed — start waits until dnsmasq serves, logs its lines (transactions at debug), records its pid; stop ends it', async (t) => {
  const { settings, records, starts, options } = await setup(t, SERVE);
  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  const pid = supervisor.pid!;
  assert.ok(pid > 0 && processAlive(pid));
  assert.deepEqual(await starts(), [pid]);
  assert.equal((await readFile(pidFileFor(options.leaseFile), 'utf8')).trim(), String(pid));
  assert.ok(records.some((r) => r.level === 'info' && r.obj.dnsmasq === 'dnsmasq: started, version fake'));
  assert.ok(records.some((r) => r.level === 'debug' && String(r.obj.dnsmasq).includes('DHCPACK')));
  assert.ok(records.some((r) => r.msg === 'dnsmasq serves DHCP on the bridge'));
  await supervisor.stop();
  assert.equal(processAlive(pid), false);
  await assert.rejects(readFile(pidFileFor(options.leaseFile)), { code: 'ENOENT' });
});

test('managed — a dnsmasq that exits at start fails start with DNSMASQ_START_FAILED and its last words', async (t) => {
  const { settings } = await setup(t, 'echo "dnsmasq: unknown interface br0" >&2; exit 2', false);
  await assert.rejects(ManagedDnsmasq.start(settings), (error: { code: string; message: string; details: { output: string; argv: string[] } }) => {
    assert.equal(error.code, 'DNSMASQ_START_FAILED');
    assert.match(error.message, /exited with 2: .*unknown interface br0/s);
    assert.match(error.details.output, /unknown interface br0/);
    assert.ok(error.details.argv.includes('--interface=br0'));
    return true;
  });
});

test('managed — a missing binary fails start with DNSMASQ_START_FAILED', async (t) => {
  const { settings } = await setup(t, SERVE);
  const missing = { ...settings, managed: { ...settings.managed, dnsmasqBinary: '/nonexistent/dnsmasq' } };
  await assert.rejects(ManagedDnsmasq.start(missing), (error: { code: string; message: string }) => {
    assert.equal(error.code, 'DNSMASQ_START_FAILED');
    assert.match(error.message, /ENOENT/);
    return true;
  });
});

test('managed — a dnsmasq that never says it serves is accepted once its lease file exists and it stayed up a second', async (t) => {
  const { settings } = await setup(t, SERVE, false);
  const started = performance.now();
  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  assert.ok(performance.now() - started >= 1_000);
  assert.ok(supervisor.pid);
});

test('managed — a dnsmasq that keeps dying is restarted with a doubling delay, capped; stop ends the cycle', async (t) => {
  const { settings, records, starts } = await setup(t, 'sleep 0.2; exit 3');
  const supervisor = await ManagedDnsmasq.start({ ...settings, restartInitialMs: 50, restartMaxMs: 200 });
  t.after(() => supervisor.stop());
  await until(async () => (await starts()).length >= 5, 10_000, '5 starts');
  await supervisor.stop();
  const afterStop = (await starts()).length;
  const delays = records.filter((r) => r.msg === 'dnsmasq exited; restarting it').map((r) => r.obj.restartInMs);
  assert.deepEqual(delays.slice(0, 4), [50, 100, 200, 200]);
  const exit = records.find((r) => r.msg === 'dnsmasq exited; restarting it')!;
  assert.equal(exit.level, 'error');
  assert.equal(exit.obj.code, 3);
  assert.match(String(exit.obj.output), /DHCP, IP range/);
  await new Promise((resolve) => setTimeout(resolve, 400));
  assert.equal((await starts()).length, afterStop, 'no restart after stop');
  assert.equal(supervisor.pid, undefined);
});

test('managed — a dnsmasq that ignores SIGTERM is killed after the grace period', async (t) => {
  const { settings, records } = await setup(t, `trap "" TERM; ${SERVE}`);
  const supervisor = await ManagedDnsmasq.start({ ...settings, stopGraceMs: 300 });
  t.after(() => supervisor.stop());
  const pid = supervisor.pid!;
  const stopping = performance.now();
  await supervisor.stop();
  assert.ok(performance.now() - stopping >= 290);
  assert.equal(processAlive(pid), false);
  assert.ok(records.some((r) => r.level === 'warn' && /SIGKILL/.test(r.msg)));
});

test('managed — a dnsmasq left running on the same lease file by a killed agent is stopped first', async (t) => {
  const { settings, records, options, dir } = await setup(t, SERVE);
  // What a SIGKILLed agent leaves: its dnsmasq, still running, and the pid file.
  await mkdir(join(dir, 'leases'), { recursive: true });
  const leftover = spawn(settings.managed.dnsmasqBinary, [`--dhcp-leasefile=${options.leaseFile}`], { stdio: 'ignore' });
  t.after(() => void leftover.kill('SIGKILL'));
  await writeFile(pidFileFor(options.leaseFile), `${leftover.pid}\n`);
  // An unrelated process whose pid happens to be in the file is left alone.
  const unrelated = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.after(() => void unrelated.kill('SIGKILL'));
  await new Promise((resolve) => setTimeout(resolve, 100));

  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  await until(() => leftover.exitCode !== null || leftover.signalCode !== null, 5_000, 'the leftover to exit');
  assert.equal(leftover.signalCode, 'SIGTERM');
  assert.ok(records.some((r) => r.level === 'warn' && r.obj.pid === leftover.pid));
  await supervisor.stop();

  await writeFile(pidFileFor(options.leaseFile), `${unrelated.pid}\n`);
  const second = await ManagedDnsmasq.start(settings);
  t.after(() => second.stop());
  assert.equal(processAlive(unrelated.pid!), true);
  await second.stop();
});
