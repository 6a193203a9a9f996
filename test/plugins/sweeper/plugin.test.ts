/**
 * The plugin in a real in-process agent (with qemu-backend, no QEMU needed): options checked at load, a
 * `sweep-now` handled in a worker and run by the main thread, the event, the counters, the cron schedule.
 * Only folders and files in a temp state folder are ever changed here: taps are swept in `log` mode.
 */
import assert from 'node:assert/strict';
import { access, mkdir, readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { checkHostConfig } from '../../../core/config/host-config.ts';
import { rawConfigFrom } from '../../../core/config/load.ts';
import { makeRequest, type EventEnvelope } from '../../../core/envelope.ts';
import plugin from '../../../plugins/sweeper/index.ts';
import { resolveSweeperOptions, sweeperOptionsSchema } from '../../../plugins/sweeper/options.ts';
import type { SweepResult } from '../../../plugins/sweeper/schemas.ts';
import { startAgent, tempDir } from '../../helpers.ts';

const sweeperPath = fileURLToPath(new URL('../../../plugins/sweeper/index.ts', import.meta.url));

async function check(options: unknown) {
  return checkHostConfig(
    rawConfigFrom({ host: { id: 'h1' }, plugins: [{ use: 'qemu-backend', options: { imagesDir: '/images' } }, { use: sweeperPath, options }] }, '/etc/cloudlet/cloudlet.yaml'),
  );
}

test('plugin — loads beside qemu-backend with defaults: the orphans job, log mode, every 10 minutes', async () => {
  const result = await check(undefined);
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  const loaded = result.config.plugins.find((p) => p.plugin.name === 'sweeper');
  assert.deepEqual(loaded?.options, {
    jitterMs: 30_000,
    minAgeMs: 300_000,
    jobs: { orphans: { schedule: '*/10 * * * *', action: 'log', kinds: {}, stopTimeoutMs: 60_000 } },
  });
  assert.deepEqual(Object.keys(plugin.messages ?? {}), ['sweep-now']);
  assert.deepEqual(plugin.dependencies, { 'qemu-backend': '^1.0.0' });
  // Options travel to worker threads by structured clone: plain data only.
  assert.deepEqual(structuredClone(loaded?.options), loaded?.options);
});

test('plugin — without qemu-backend it is refused at load', async () => {
  const result = await checkHostConfig(rawConfigFrom({ host: { id: 'h1' }, plugins: [{ use: sweeperPath }] }, '/etc/cloudlet/cloudlet.yaml'));
  assert.ok(!result.ok);
  assert.deepEqual(result.problems.map((p) => p.code), ['PLUGIN_DEPENDENCY_MISSING']);
});

test('options — a schedule node-cron accepts but that never comes round is refused at check, naming the job', async () => {
  // Before: `config check` said ok, and the agent failed in the sweeper's start hook with node-cron's "Could
  // not find next matching date within reasonable time range", naming no job.
  for (const [schedule, timezone] of [['0 0 1 * 1#5'], ['0 0 30W 2 *'], ['30 2 * 3 0L', 'Europe/Berlin']] as const) {
    const result = await check({ ...(timezone ? { timezone } : {}), jobs: { orphans: { schedule } } });
    assert.ok(!result.ok, `${schedule} ${timezone ?? ''} was accepted`);
    const problem = result.problems.find((p) => p.path === 'plugins[1].options.jobs.orphans.schedule');
    assert.ok(problem, JSON.stringify(result.problems));
    assert.match(problem.message, /never comes round/);
  }
  // The same time outside a daylight-saving gap is fine, as is a 29 February.
  for (const schedule of ['30 3 * 3 0L', '0 0 29 2 *']) assert.ok((await check({ timezone: 'Europe/Berlin', jobs: { orphans: { schedule } } })).ok, schedule);
});

test('options — a schedule that is not cron is one problem, with node-cron\'s reason; not also "never comes round"', async () => {
  const result = await check({ jobs: { orphans: { schedule: '0 25 * * *' } } });
  assert.ok(!result.ok);
  const problems = result.problems.filter((p) => p.path === 'plugins[1].options.jobs.orphans.schedule');
  assert.deepEqual(
    problems.map((p) => p.message),
    ['not a cron expression node-cron accepts (25 is not valid for hour): "minute hour day-of-month month day-of-week", optionally with seconds first (e.g. "*/15 * * * *")'],
  );
  const short = await check({ jobs: { orphans: { schedule: '* * * *' } } });
  assert.ok(!short.ok);
  assert.match(short.problems.map((p) => p.message).join('\n'), /^not a cron expression node-cron accepts \(expected 5 or 6 fields but got 4\): /);
});

test('options — bad schedules, actions, zones and names are refused with their path', async () => {
  const result = await check({
    timezone: 'Mars/Olympus',
    qemu: { stateDir: 'relative', tapPrefix: 'TooLongPrefix' },
    jobs: {
      orphans: { schedule: '61 * * * *', action: 'delete', kinds: { 'orphan-lease': 'reap' } },
      leases: { schedule: 'every minute', interface: 'a-bridge-name-too-long', macPrefixes: ['zz'] },
    },
  });
  assert.ok(!result.ok);
  const byPath = Object.fromEntries(result.problems.map((p) => [p.path, `${p.message} ${p.allowed ?? ''}`]));
  const at = (path: string) => byPath[`plugins[1].options.${path}`] ?? '';
  assert.match(at('timezone'), /IANA time zone/);
  assert.match(at('qemu.stateDir'), /absolute path/);
  assert.match(at('qemu.tapPrefix'), /at most 7 characters/);
  assert.match(at('jobs.orphans.schedule'), /cron expression/);
  assert.match(at('jobs.orphans.action'), /log|stop|reap/);
  assert.match(at('jobs.orphans.kinds'), /orphan-lease/);
  assert.match(at('jobs.leases.schedule'), /cron expression/);
  assert.match(at('jobs.leases.interface'), /15/);
  assert.match(at('jobs.leases.macPrefixes[0]'), /MAC/);
  const leases = await check({ jobs: { leases: { interface: 'br0' } } });
  assert.ok(leases.ok);
  const options = leases.config.plugins.find((p) => p.plugin.name === 'sweeper')?.options as { jobs: Record<string, { leaseFile?: string }> };
  assert.deepEqual(Object.keys(options.jobs), ['leases'], 'naming jobs replaces the default');
  assert.equal(options.jobs.leases?.leaseFile, '/var/lib/cloudlet/dnsmasq/br0.leases');
});

interface Planted {
  stateDir: string;
  bare: string;
  stray: string;
  stopped: string;
}

/** A state folder with a bare VM folder, a half-written record, a stopped VM and someone else's things. */
async function plant(t: TestContext): Promise<{ dir: string } & Planted> {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'qemu');
  const old = new Date(Date.now() - 3_600_000);
  const folder = async (id: string, files: Record<string, string>) => {
    await mkdir(join(stateDir, id), { recursive: true });
    for (const [name, text] of Object.entries(files)) await writeFile(join(stateDir, id, name), text);
  };
  const now = new Date().toISOString();
  const stoppedRecord = {
    v: 1, id: 'test-host.stoppedx', host: 'test-host', image: 'tiny', imageKind: 'kernel', memoryMiB: 64, vcpus: 1, mac: '02:00:00:00:00:01',
    network: { mode: 'none' }, autostart: false, desired: 'stopped', createdAt: now, updatedAt: now,
  };
  await folder('test-host.stoppedx', { 'vm.json': JSON.stringify(stoppedRecord), 'vm.json.4242.tmp': '{"v":1' });
  await folder('test-host.barexxxx', { 'disk.qcow2': 'overlay bytes', 'serial.log': '' });
  await folder('otherhost.barexxxx', { 'disk.qcow2': 'not ours' });
  await writeFile(join(stateDir, 'notes.txt'), 'operator notes');
  await utimes(join(stateDir, 'test-host.stoppedx', 'vm.json.4242.tmp'), old, old);
  await utimes(join(stateDir, 'test-host.barexxxx'), old, old);
  await mkdir(join(dir, 'images'));
  return { dir, stateDir, bare: join(stateDir, 'test-host.barexxxx'), stray: join(stateDir, 'test-host.stoppedx', 'vm.json.4242.tmp'), stopped: 'test-host.stoppedx' };
}

function sweeperConfig(planted: { dir: string; stateDir: string }, sweeper: Record<string, unknown>) {
  return {
    plugins: [
      { use: 'qemu-backend', options: { imagesDir: join(planted.dir, 'images'), stateDir: planted.stateDir } },
      // No `qemu` block: the sweeper takes qemu-backend's stateDir (core API 1.6 dependencyOptions).
      { use: sweeperPath, options: { minAgeMs: 60_000, ...sweeper } },
    ],
  };
}

const exists = (path: string) => access(path).then(() => true, () => false);

test('sweep-now — a dry run lists what reap would do and changes nothing; the real run does it; counters add up', async (t) => {
  const planted = await plant(t);
  const { client } = await startAgent(
    t,
    sweeperConfig(planted, { jobs: { orphans: { schedule: '0 0 1 1 *', action: 'reap', kinds: { 'orphan-tap': 'log', 'orphan-process': 'log' } } } }),
  );
  const events: EventEnvelope[] = [];
  await client.subscribe((event) => events.push(event));
  const sweep = async (payload: unknown) => {
    const stages: string[] = [];
    const reply = await client.request(makeRequest({ type: 'sweep-now', payload }), { onProgress: (p) => stages.push(p.stage) });
    assert.equal(reply.ok, true, JSON.stringify(reply.error));
    return { result: reply.result as SweepResult, stages };
  };
  const mine = (result: SweepResult) => result.actions.filter((a) => a.kind === 'orphan-folder' || a.kind === 'stray-file').map((a) => [a.kind, a.target, a.step, a.outcome]);

  const dry = await sweep({ dryRun: true });
  assert.equal(dry.result.dryRun, true);
  assert.equal(dry.result.trigger, 'message');
  assert.deepEqual(dry.stages, ['inventory']);
  assert.deepEqual(mine(dry.result), [
    ['orphan-folder', planted.bare, 'remove-folder', 'planned'],
    ['stray-file', planted.stray, 'remove-file', 'planned'],
  ]);
  assert.ok(await exists(planted.bare));
  assert.ok(await exists(planted.stray));
  assert.deepEqual(dry.result.ignored.filter((i) => i.kind === 'folder'), [{ kind: 'folder', target: 'otherhost.barexxxx', reason: "another host's VM id" }]);
  assert.deepEqual(dry.result.counters.found, {}, 'a dry run counts as a run, not as findings');

  const real = await sweep({});
  assert.deepEqual(real.stages, ['inventory', 'acting']);
  assert.deepEqual(mine(real.result), [
    ['orphan-folder', planted.bare, 'remove-folder', 'done'],
    ['stray-file', planted.stray, 'remove-file', 'done'],
  ]);
  assert.equal(await exists(planted.bare), false);
  assert.equal(await exists(planted.stray), false);
  // `.claims`: where the removal took its claim on the VM id (qemu-backend's vm-claim.ts), released since.
  assert.deepEqual((await readdir(planted.stateDir)).sort(), ['.claims', 'notes.txt', 'otherhost.barexxxx', planted.stopped]);
  assert.deepEqual(await readdir(join(planted.stateDir, '.claims')), []);
  assert.deepEqual(await readdir(join(planted.stateDir, planted.stopped)), ['vm.json']);
  const { counters } = real.result;
  assert.deepEqual([counters.runs, counters.dryRuns, counters.byTrigger], [2, 1, { schedule: 0, message: 2 }]);
  assert.deepEqual([counters.found['orphan-folder'], counters.done['orphan-folder'], counters.done['stray-file']], [1, 1, 1]);
  assert.equal(counters.lastRun?.runId, real.result.runId);

  const again = await sweep({ jobs: ['orphans'] });
  assert.deepEqual(mine(again.result), [], 'nothing is left');

  const deadline = Date.now() + 5_000;
  while (events.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(
    events.map((e) => [e.type, e.host, (e.payload as SweepResult).runId]),
    [dry, real, again].map((s) => ['sweep.completed', 'test-host', s.result.runId]),
  );
  assert.equal((events[2]!.payload as SweepResult).counters.runs, 3);
});

test('sweep-now — a job this host does not configure is refused', async (t) => {
  const planted = await plant(t);
  const { client } = await startAgent(t, sweeperConfig(planted, { jobs: { orphans: { schedule: '0 0 1 1 *' } } }));
  const reply = await client.request(makeRequest({ type: 'sweep-now', payload: { jobs: ['leases'] } }));
  assert.equal(reply.ok, false);
  assert.equal(reply.error?.code, 'SWEEP_JOB_NOT_CONFIGURED');
  assert.match(reply.error?.message ?? '', /leases not configured on host test-host; configured: orphans/);
  const invalid = await client.request(makeRequest({ type: 'sweep-now', payload: { jobs: ['everything'] } }));
  assert.equal(invalid.error?.code, 'INVALID_PAYLOAD');
});

test('schedule — a job runs on its cron schedule (after its random delay) and reports like sweep-now', { timeout: 30_000 }, async (t) => {
  const planted = await plant(t);
  const { client, logs } = await startAgent(t, sweeperConfig(planted, { jitterMs: 300, jobs: { orphans: { schedule: '* * * * * *', action: 'log' } } }));
  const events: SweepResult[] = [];
  await client.subscribe((event) => events.push(event.payload as SweepResult));
  // Let the subscribe frame arrive first.
  await client.request(makeRequest({ type: 'host-info', payload: {} }));
  const deadline = Date.now() + 10_000;
  while (events.filter((e) => e.trigger === 'schedule').length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const scheduled = events.filter((e) => e.trigger === 'schedule');
  assert.ok(scheduled.length >= 2, `two scheduled runs within 10 s, saw ${scheduled.length}`);
  for (const run of scheduled) {
    assert.deepEqual(run.jobs, ['orphans']);
    assert.deepEqual(
      run.actions.filter((a) => a.kind === 'orphan-folder').map((a) => [a.action, a.step, a.outcome]),
      [['log', 'none', 'logged']],
    );
  }
  assert.ok(await exists(planted.bare), 'log mode changed nothing');
  assert.ok(scheduled.at(-1)!.counters.byTrigger.schedule >= 2);
  const summaries = logs().filter((l) => typeof l.msg === 'string' && /^sweep finished: \d+ found/.test(l.msg as string));
  assert.ok(summaries.length >= 2, 'each run logs a summary');
  assert.ok(logs().some((l) => l.plugin === 'sweeper' && l.msg === 'sweeper scheduled'));
});

test("options — without a qemu block the sweeper follows qemu-backend's folder, tap prefix and binaries; a contradicting block is refused", () => {
  const backend = { stateDir: '/srv/vms', tapPrefix: 'vm', qemuBinary: '/opt/qemu/bin/qemu-system-x86_64', ipBinary: '/sbin/ip', imagesDir: '/images' };
  assert.deepEqual(resolveSweeperOptions(sweeperOptionsSchema.parse({}), backend).qemu, {
    stateDir: '/srv/vms',
    tapPrefix: 'vm',
    qemuBinary: '/opt/qemu/bin/qemu-system-x86_64',
    ipBinary: '/sbin/ip',
  });
  // Without qemu-backend's options (a unit test, an old core): the documented defaults.
  assert.deepEqual(resolveSweeperOptions(sweeperOptionsSchema.parse({})).qemu, {
    stateDir: '/var/lib/cloudlet/qemu',
    tapPrefix: 'clt',
    qemuBinary: 'qemu-system-x86_64',
    ipBinary: 'ip',
  });
  // The same values given again are fine.
  const { imagesDir: _images, ...sameAsBackend } = backend;
  assert.equal(resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: sameAsBackend }), backend).qemu.stateDir, '/srv/vms');
  // A partial block is compared on what it says, and the rest follows qemu-backend: before, the keys left
  // out took the sweeper's own defaults and were refused ('qemu.tapPrefix is "clt"', never written).
  assert.deepEqual(resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: { stateDir: '/srv/vms' } }), backend).qemu, {
    stateDir: '/srv/vms',
    tapPrefix: 'vm',
    qemuBinary: '/opt/qemu/bin/qemu-system-x86_64',
    ipBinary: '/sbin/ip',
  });
  // Without qemu-backend's options, a partial block is completed with the documented defaults.
  assert.deepEqual(resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: { tapPrefix: 'vm' } })).qemu, {
    stateDir: '/var/lib/cloudlet/qemu',
    tapPrefix: 'vm',
    qemuBinary: 'qemu-system-x86_64',
    ipBinary: 'ip',
  });
  assert.throws(
    () => resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: { stateDir: '/var/lib/cloudlet/qemu', tapPrefix: 'vm' } }), backend),
    (error: Error & { code?: string }) =>
      error.code === 'PLUGIN_OPTIONS_INVALID' &&
      /qemu\.stateDir is "\/var\/lib\/cloudlet\/qemu" but qemu-backend's stateDir is "\/srv\/vms"/.test(error.message) &&
      /Leave out the sweeper's "qemu" block/.test(error.message),
  );
});

test('plugin — `config check` reports a qemu block that contradicts qemu-backend, at the sweeper\'s options, naming each value', async () => {
  const result = await check({ qemu: { stateDir: '/srv/elsewhere', tapPrefix: 'clt', ipBinary: '/usr/local/sbin/ip' } });
  assert.ok(!result.ok);
  assert.deepEqual(
    result.problems.map((p) => [p.code, p.path]),
    [
      ['PLUGIN_OPTIONS_INVALID', 'plugins[1].options.qemu.stateDir'],
      ['PLUGIN_OPTIONS_INVALID', 'plugins[1].options.qemu.ipBinary'],
    ],
  );
  assert.match(result.problems[0]?.message ?? '', /"\/srv\/elsewhere" but qemu-backend's stateDir is "\/var\/lib\/cloudlet\/qemu"/);
  assert.match(result.problems[0]?.allowed ?? '', /leave out/i);
});

test('plugin — an agent whose sweeper contradicts qemu-backend does not start: its config is refused, naming the values', async (t) => {
  const planted = await plant(t);
  await assert.rejects(
    startAgent(t, {
      plugins: [
        { use: 'qemu-backend', options: { imagesDir: join(planted.dir, 'images'), stateDir: planted.stateDir } },
        { use: sweeperPath, options: { qemu: { stateDir: '/var/lib/cloudlet/qemu' } } },
      ],
    }),
    (error: Error & { code?: string }) => error.code === 'PLUGIN_OPTIONS_INVALID' && error.message.includes(`qemu-backend's stateDir is "${planted.stateDir}"`),
  );
});
