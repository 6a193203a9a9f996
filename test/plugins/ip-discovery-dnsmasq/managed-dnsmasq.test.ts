/**
 * The managed-mode supervisor against stand-in dnsmasq scripts (start, crash, ignore SIGTERM); the real
 * dnsmasq, in a network namespace, is in test/e2e/ip-discovery-dnsmasq.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmod, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import type { PluginLogger } from '../../../core/plugin-api.ts';
import { ManagedDnsmasq, pidFileFor } from '../../../plugins/ip-discovery-dnsmasq/managed-dnsmasq.ts';
import { dnsmasqOptionsSchema } from '../../../plugins/ip-discovery-dnsmasq/options.ts';
import { Agent } from '../../../core/agent.ts';
import { loadHostConfig } from '../../../core/config/host-config.ts';
import { rawConfigFrom } from '../../../core/config/load.ts';
import { processAlive, startAgent, tempDir, until } from '../../helpers.ts';

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

const SERVE = 'while :; do sleep 0.1; done';

test('managed — start waits until dnsmasq serves, logs its lines (transactions at debug), records its pid; stop ends it', async (t) => {
  const { settings, records, starts, options, dir } = await setup(t, SERVE);
  // A temporary pid file a crash left under this pid (a container reuses pids) is no obstacle. Before, it
  // failed every start with EEXIST, naming the pid file, not the stale file.
  await mkdir(join(dir, 'leases'), { recursive: true });
  await writeFile(`${pidFileFor(options.leaseFile)}.${process.pid}.tmp`, '12345\n');
  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  const pid = supervisor.pid!;
  assert.ok(pid > 0 && processAlive(pid));
  assert.deepEqual(await starts(), [pid]);
  assert.equal((await readFile(pidFileFor(options.leaseFile), 'utf8')).trim(), String(pid));
  // Its environment names its supervisor: a dnsmasq whose parent is not that process is a leftover.
  assert.ok((await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0').includes(`CLOUDLET_DNSMASQ_SUPERVISOR=${process.pid}`));
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
  // What a SIGKILLed agent leaves: its dnsmasq, still running (re-parented: its agent is gone), and the pid file.
  await mkdir(join(dir, 'leases'), { recursive: true });
  const leftoverPid = await orphan(settings.managed.dnsmasqBinary, [`--dhcp-leasefile=${options.leaseFile}`]);
  t.after(() => void kill(leftoverPid));
  const leftover = { pid: leftoverPid };
  await writeFile(pidFileFor(options.leaseFile), `${leftover.pid}\n`);
  // An unrelated process whose pid happens to be in the file is left alone.
  const unrelated = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.after(() => void unrelated.kill('SIGKILL'));
  await new Promise((resolve) => setTimeout(resolve, 100));

  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  await until(() => !processAlive(leftover.pid), 5_000, 'the leftover to exit');
  assert.ok(records.some((r) => r.level === 'warn' && r.obj.pid === leftover.pid));
  await supervisor.stop();

  await writeFile(pidFileFor(options.leaseFile), `${unrelated.pid}\n`);
  const second = await ManagedDnsmasq.start(settings);
  t.after(() => second.stop());
  assert.equal(processAlive(unrelated.pid!), true);
  await second.stop();
});

/**
 * A child subreaper (as systemd --user, tini -s and s6 are) that starts `argv` through a shell that exits at
 * once: the process is then the subreaper's child, alive and not init. It reaps what it adopts, so a killed
 * child does not linger as a zombie. Prints the process's pid and the shell's. The argv comes in the
 * environment (ARGV, JSON): on its own command line the subreaper would look like a managed dnsmasq itself.
 */
const SUBREAPER = `
import ctypes, json, os, subprocess, time
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
sh = subprocess.Popen(['sh', '-c', '"$0" "$@" >/dev/null 2>&1 </dev/null & echo $!', *json.loads(os.environ['ARGV'])], stdout=subprocess.PIPE)
pid = sh.stdout.readline().strip().decode()
sh.wait()
print(pid, sh.pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
`;

test('managed — a leftover taken in by a subreaper (systemd --user, tini), not init, is still a leftover and is stopped', { timeout: 30_000 }, async (t) => {
  // Before, any live parent but init counted as the dnsmasq's supervisor: under a subreaper every later start
  // failed with "already serves DHCP … for process <subreaper> (another agent?)" until someone killed it.
  const { settings, options, dir } = await setup(t, SERVE);
  await mkdir(join(dir, 'leases'), { recursive: true });
  const argv = [settings.managed.dnsmasqBinary, '--no-daemon', '--interface=br0', `--dhcp-leasefile=${options.leaseFile}`];
  // The agent that started it, and is gone now: a process that has exited.
  const gone = spawn('true');
  await new Promise((resolve) => gone.once('exit', resolve));
  const reaper = spawn('python3', ['-c', SUBREAPER], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ARGV: JSON.stringify(argv), CLOUDLET_DNSMASQ_SUPERVISOR: String(gone.pid) },
  });
  t.after(() => void reaper.kill('SIGKILL'));
  const [leftoverPid] = (await new Promise<string>((resolve) => reaper.stdout.once('data', (d: Buffer) => resolve(d.toString())))).trim().split(' ').map(Number) as [number];
  t.after(() => kill(leftoverPid));
  const parent = Number(/^PPid:\s+(\d+)$/m.exec(await readFile(`/proc/${leftoverPid}/status`, 'utf8'))?.[1]);
  assert.equal(parent, reaper.pid, 'the leftover\'s parent is the subreaper');
  // What the killed agent recorded.
  await writeFile(pidFileFor(options.leaseFile), `${leftoverPid}\n`);

  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  await until(() => !processAlive(leftoverPid), 5_000, 'the leftover to exit');
  await supervisor.stop();
});

test('managed — an unsupervised dnsmasq on the bridge with another lease file is refused, named, and left alone', { timeout: 30_000 }, async (t) => {
  // Before, a second DHCP server was started beside it: two servers handing out conflicting addresses.
  const { settings, dir } = await setup(t, SERVE);
  const otherLeases = join(dir, 'old', 'br0.leases');
  await mkdir(join(dir, 'old'), { recursive: true });
  const stray = await orphan(settings.managed.dnsmasqBinary, ['--no-daemon', '--interface=br0', `--dhcp-leasefile=${otherLeases}`]);
  t.after(() => kill(stray));
  await until(async () => (await readFile(otherLeases, 'utf8').catch(() => undefined)) !== undefined, 5_000, 'the stray dnsmasq');
  await assert.rejects(ManagedDnsmasq.start(settings), (error: { code: string; message: string }) => {
    assert.equal(error.code, 'DNSMASQ_START_FAILED');
    assert.equal(
      error.message,
      `dnsmasq pid ${stray} already serves DHCP on br0 with another lease file (${otherLeases}) and no agent supervises it (left by an agent that is gone, or started by hand): stop it (kill ${stray}) before starting this agent`,
    );
    return true;
  });
  assert.equal(processAlive(stray), true);
});

test('managed — a leftover on this lease file is stopped even when its pid file is gone', { timeout: 30_000 }, async (t) => {
  // Before, only the pid file led to a leftover: with it deleted (a cleaned state folder, a tmpfs after a
  // crash), a second DHCP server was started beside the first on the same bridge and lease file.
  const { settings, options, dir, records } = await setup(t, SERVE);
  await mkdir(join(dir, 'leases'), { recursive: true });
  const leftover = await orphan(settings.managed.dnsmasqBinary, ['--no-daemon', '--interface=br0', `--dhcp-leasefile=${options.leaseFile}`]);
  t.after(() => kill(leftover));
  await until(async () => (await readFile(options.leaseFile, 'utf8').catch(() => undefined)) !== undefined, 5_000, 'the leftover dnsmasq');

  const supervisor = await ManagedDnsmasq.start(settings);
  t.after(() => supervisor.stop());
  assert.equal(processAlive(leftover), false, 'the leftover is stopped before the new dnsmasq starts');
  assert.ok(records.some((r) => r.level === 'warn' && r.obj.pid === leftover));
  assert.notEqual(supervisor.pid, undefined);
  await supervisor.stop();
});

/** Starts `argv` as an orphan (a child of a shell that exits at once), as an agent killed with SIGKILL leaves its dnsmasq. */
async function orphan(binary: string, args: string[]): Promise<number> {
  const shell = spawn('sh', ['-c', '"$0" "$@" >/dev/null 2>&1 </dev/null & echo $!', binary, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  shell.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((resolve) => shell.once('close', resolve));
  return Number(out.trim());
}

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
}

test('managed — a pid file or lease file that is not a regular file, or a lease folder that is a file, fails start clearly and starts nothing', { timeout: 30_000 }, async (t) => {
  // Before: a FIFO as the pid file hung the start for good; a symlink had the pid written over its target;
  // a folder left the new dnsmasq running after a raw EISDIR; a file as the lease folder gave a raw EEXIST.
  const { settings, options, dir, starts } = await setup(t, SERVE);
  const pidFile = pidFileFor(options.leaseFile);
  await mkdir(join(dir, 'leases'), { recursive: true });
  const victim = join(dir, 'victim.conf');
  await writeFile(victim, 'important: configuration\n');
  const cases: [string, () => Promise<void>, RegExp][] = [
    ['FIFO pid file', async () => void execFileSync('mkfifo', [pidFile]), /the pid file .* must be a regular file, but it is a FIFO/],
    ['symlinked pid file', async () => symlink(victim, pidFile), /the pid file .* must be a regular file, but it is a symlink/],
    ['folder pid file', async () => mkdir(pidFile), /the pid file .* must be a regular file, but it is a folder/],
    ['FIFO lease file', async () => void execFileSync('mkfifo', [options.leaseFile]), /the lease file .* must be a regular file, but it is a FIFO/],
  ];
  for (const [what, make, message] of cases) {
    await make();
    await assert.rejects(ManagedDnsmasq.start(settings), (error: { code: string; message: string }) => {
      assert.equal(error.code, 'DNSMASQ_START_FAILED', what);
      assert.match(error.message, message, what);
      return true;
    });
    await rm(pidFile, { recursive: true, force: true });
    await rm(options.leaseFile, { force: true });
  }
  assert.deepEqual(await starts(), [], 'no dnsmasq was started');
  assert.equal(await readFile(victim, 'utf8'), 'important: configuration\n');
  const fileAsFolder = join(dir, 'not-a-folder');
  await writeFile(fileAsFolder, 'x');
  await assert.rejects(ManagedDnsmasq.start({ ...settings, leaseFile: join(fileAsFolder, 'br0.leases') }), /not-a-folder must be a folder \(for the lease file\), but it is a file/);
  // A lease folder reached through a symlink (state kept on another disk) is a folder all the same.
  await mkdir(join(dir, 'elsewhere'));
  await symlink(join(dir, 'elsewhere'), join(dir, 'linked'));
  const linked = await ManagedDnsmasq.start({ ...settings, leaseFile: join(dir, 'linked', 'br0.leases') });
  await linked.stop();
});

test('managed — a second supervisor for a bridge another one serves is refused; the first one\'s dnsmasq runs on', { timeout: 30_000 }, async (t) => {
  // Before, a second agent with the same lease file took the first one's dnsmasq for a leftover and killed
  // it (the first restarted it: two authoritative DHCP servers), and one with another lease file started a
  // second DHCP server on the bridge beside it.
  const { settings, options, dir } = await setup(t, SERVE);
  const first = await ManagedDnsmasq.start(settings);
  t.after(() => first.stop());
  for (const leaseFile of [options.leaseFile, join(dir, 'other', 'br0.leases')]) {
    await assert.rejects(ManagedDnsmasq.start({ ...settings, leaseFile }), (error: { code: string; message: string }) => {
      assert.equal(error.code, 'DNSMASQ_START_FAILED', leaseFile);
      assert.match(error.message, new RegExp(`dnsmasq pid ${first.pid} already serves DHCP on br0`), leaseFile);
      return true;
    });
    assert.ok(first.pid !== undefined && processAlive(first.pid), 'the first dnsmasq still runs');
  }
});

test('managed — a dnsmasq on a bridge of the same name in another network namespace is no conflict', { timeout: 30_000 }, async (t) => {
  // Bridges are per network namespace: the tests run many "br0"s at once. Before this check, a managed
  // dnsmasq in another namespace's br0 made every start here fail (a CI run failed 10 tests so).
  const { settings, options, dir } = await setup(t, SERVE);
  const elsewhere = spawn('unshare', ['--net', settings.managed.dnsmasqBinary, '--no-daemon', `--interface=${settings.managed.bridge}`, `--dhcp-leasefile=${join(dir, 'other.leases')}`], {
    stdio: 'ignore',
  });
  t.after(() => void elsewhere.kill('SIGKILL'));
  await until(async () => (await readFile(join(dir, 'other.leases'), 'utf8').catch(() => undefined)) !== undefined, 5_000, 'the other namespace\'s dnsmasq');
  const here = await ManagedDnsmasq.start({ ...settings, leaseFile: options.leaseFile });
  await here.stop();
});

test('managed — an agent process that exits at once (a second SIGTERM) takes its dnsmasq with it', { timeout: 30_000 }, async (t) => {
  // Before, process.exit(130) ran no stop hook, and the dnsmasq child served the bridge on, unsupervised.
  const { options } = await setup(t, SERVE);
  const script = `
    import { ManagedDnsmasq } from ${JSON.stringify(new URL('../../../plugins/ip-discovery-dnsmasq/managed-dnsmasq.ts', import.meta.url).href)};
    const log = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
    const supervisor = await ManagedDnsmasq.start({ managed: ${JSON.stringify(options.managed)}, leaseFile: ${JSON.stringify(options.leaseFile)}, log });
    console.log(supervisor.pid);
    process.exit(130);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise((resolve) => child.once('close', resolve));
  assert.equal(code, 130);
  const pid = Number(out.trim());
  assert.ok(pid > 0, out);
  t.after(() => kill(pid));
  await until(() => !processAlive(pid), 5_000, 'the dnsmasq of the exited process to be gone');
});

test('managed — in one process, a second agent whose dnsmasq start is refused does not stop the first agent\'s', { timeout: 30_000 }, async (t) => {
  // Before, the stop hook found the supervisor by lease file alone: the second agent's stop (after its own
  // start failed) stopped the first agent's dnsmasq.
  const { options, dir, starts } = await setup(t, SERVE);
  const plugins = [{ use: 'ip-discovery-dnsmasq', options: { leaseFile: options.leaseFile, managed: options.managed } }];
  await startAgent(t, { plugins, state: { dir: join(dir, 'one') } });
  const [first] = await starts();
  assert.ok(first !== undefined && processAlive(first));
  const second = new Agent(
    await loadHostConfig(
      rawConfigFrom({ host: { id: 'two' }, transport: { kind: 'local', socket: join(dir, 'two.sock') }, state: { dir: join(dir, 'two') }, plugins }, join(dir, 'two.yaml')),
    ),
  );
  await assert.rejects(second.start(), (error: { code: string }) => error.code === 'PLUGIN_HOOK_FAILED');
  await second.stop('start failed');
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(processAlive(first), true, "the first agent's dnsmasq still runs");
});
