/**
 * Carrying out a plan: the checks made right before each step (a record appeared, the VM is running again or
 * was stopped meanwhile), what a step-less action reports, and an aborted run. Files in a temp folder only;
 * qemu-backend's messages are answered by a fake dispatch.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import process from 'node:process';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import type { DispatchReply, PluginLogger } from '../../../core/plugin-api.ts';
import { reapOrphan, removeBareFolder, settleDeadRecord, settleTap } from '../../../plugins/sweeper/act-orphans.ts';
import { parseStat } from '../../../plugins/sweeper/proc-scan.ts';
import { holdClaim } from '../qemu-backend/claim-helpers.ts';
import { carryOut } from '../../../plugins/sweeper/act.ts';
import { resolveSweeperOptions, sweeperOptionsSchema } from '../../../plugins/sweeper/options.ts';
import type { Finding } from '../../../plugins/sweeper/plan.ts';
import { runSweep } from '../../../plugins/sweeper/sweep.ts';
import { requestSweep } from '../../../plugins/sweeper/relay.ts';
import { SweeperService } from '../../../plugins/sweeper/service.ts';
import cron from 'node-cron';
import { tempDir } from '../../helpers.ts';

const quiet: PluginLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const record = { id: 'h1.deadxxxx', mac: '02:00:00:00:00:01', tap: null, autostart: true, desired: 'running' as const, createdAtMs: 0 };
const exists = (path: string) => access(path).then(() => true, () => false);

function fakeDispatch(answers: Record<string, DispatchReply>) {
  const calls: [string, unknown][] = [];
  const dispatch = async (type: string, payload: unknown) => {
    calls.push([type, payload]);
    const answer = answers[type];
    if (!answer) throw new Error(`unexpected ${type}`);
    return answer;
  };
  return { dispatch, calls };
}

const okReply = (result: unknown): DispatchReply => ({ ok: true, host: 'h1', result });
const errorReply = (code: string, message: string): DispatchReply => ({ ok: false, host: 'h1', error: { code, message } });

test('dead record — confirmed stopped-but-meant-to-run through get-vm, then started (autostart) or marked stopped', async () => {
  const start = fakeDispatch({ 'get-vm': okReply({ state: 'stopped', desired: 'running' }), 'start-vm': okReply({ pid: 4242 }) });
  assert.deepEqual(await settleDeadRecord(start.dispatch, record, true), { outcome: 'done', detail: 'started again (pid 4242)' });
  assert.deepEqual(start.calls, [['get-vm', { vm: record.id }], ['start-vm', { vm: record.id }]]);
  const stop = fakeDispatch({ 'get-vm': okReply({ state: 'stopped', desired: 'running' }), 'stop-vm': okReply({ pid: null }) });
  assert.deepEqual(await settleDeadRecord(stop.dispatch, record, false), { outcome: 'done', detail: 'marked stopped' });
  assert.deepEqual(stop.calls[1], ['stop-vm', { vm: record.id, force: true }]);
});

test('dead record — deleted, running again or stopped by its owner meanwhile: skipped, nothing sent', async () => {
  for (const [answer, detail] of [
    [errorReply('VM_NOT_FOUND', 'no VM'), 'deleted meanwhile'],
    [okReply({ state: 'running', desired: 'running' }), 'qemu-backend reports it running'],
    [okReply({ state: 'stopped', desired: 'stopped' }), 'marked stopped meanwhile'],
  ] as const) {
    const fake = fakeDispatch({ 'get-vm': answer });
    assert.deepEqual(await settleDeadRecord(fake.dispatch, record, true), { outcome: 'skipped', detail });
    assert.equal(fake.calls.length, 1);
  }
});

test('dead record — a failed start keeps the code qemu-backend answered with; without dispatch it cannot act', async () => {
  const fake = fakeDispatch({ 'get-vm': okReply({ state: 'stopped', desired: 'running' }), 'start-vm': errorReply('IMAGE_NOT_FOUND', 'no image "tiny"') });
  await assert.rejects(settleDeadRecord(fake.dispatch, record, true), { code: 'IMAGE_NOT_FOUND', message: 'start-vm: no image "tiny"' });
  await assert.rejects(settleDeadRecord(undefined, record, true), /main thread/);
});

test('carry out — log rows, step-less stop rows, done and skipped removals, a failure, and an aborted run', async (t) => {
  const dir = await tempDir(t);
  const options = resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: { stateDir: dir }, jobs: { orphans: { action: 'reap' } } }));
  const folder = async (id: string, files: string[]) => {
    await mkdir(join(dir, id), { recursive: true });
    for (const file of files) await writeFile(join(dir, id, file), '');
    return { id, path: join(dir, id), ageMs: 1e9, hasDisk: files.includes('disk.qcow2'), entries: files };
  };
  const gone = await folder('h1.goneaaaa', ['disk.qcow2']);
  // A record was written after the inventory: the folder is a VM's again.
  const revived = await folder('h1.revivedx', ['vm.json']);
  const base = { job: 'orphans' as const, reason: 'test' };
  const findings: Finding[] = [
    { ...base, kind: 'orphan-folder', target: 'log-row', action: 'log', step: 'none', folder: gone },
    { ...base, kind: 'orphan-folder', target: 'stop-row', action: 'stop', step: 'none', folder: gone },
    { ...base, kind: 'orphan-folder', target: gone.path, action: 'reap', step: 'remove-folder', folder: gone },
    { ...base, kind: 'orphan-folder', target: revived.path, action: 'reap', step: 'remove-folder', folder: revived },
    { ...base, kind: 'dead-record', target: record.id, action: 'reap', step: 'restart', record },
  ];
  const rows = await carryOut(findings, { options, hostId: 'h1', log: quiet, signal: new AbortController().signal });
  assert.deepEqual(
    rows.map((r) => [r.target, r.outcome, r.detail ?? r.error ?? '']),
    [
      ['log-row', 'logged', ''],
      ['stop-row', 'logged', '"stop" has no step for orphan-folder'],
      [gone.path, 'done', 'removed with its overlay disk'],
      [revived.path, 'skipped', 'a record appeared meanwhile'],
      [record.id, 'failed', "SWEEP_ACTION_FAILED: records are changed through qemu-backend's messages, which only the agent's main thread can send"],
    ],
  );
  assert.equal(await exists(gone.path), false);
  assert.equal(await exists(revived.path), true);

  const leftover = await folder('h1.leftover', []);
  const controller = new AbortController();
  controller.abort();
  const aborted = await carryOut([{ ...base, kind: 'orphan-folder', target: leftover.path, action: 'reap', step: 'remove-folder', folder: leftover }], {
    options,
    hostId: 'h1',
    log: quiet,
    signal: controller.signal,
  });
  assert.deepEqual(aborted.map((r) => [r.outcome, r.detail]), [['skipped', 'the run was aborted first']]);
  assert.equal(await exists(leftover.path), true);
});

test('carry out — a failed row carries a documented code: SWEEP_ACTION_FAILED for a program that cannot run, the message\'s own code for a failed qemu-backend message', async (t) => {
  // Before, runProgram's QEMU_FAILED ("QEMU did not start", per ERRORS.md) came through for a missing
  // dhcp_release or ip, and raw errno codes for rm and kill.
  const dir = await tempDir(t);
  const options = resolveSweeperOptions(
    sweeperOptionsSchema.parse({
      qemu: { stateDir: dir, ipBinary: join(dir, 'no-ip') },
      jobs: { orphans: { action: 'reap' }, leases: { action: 'reap', interface: 'br0', releaseBinary: join(dir, 'no-dhcp_release'), leaseFile: join(dir, 'x.leases') } },
    }),
  );
  const lease = { family: 'ipv4', address: '10.0.0.5', mac: '02:00:00:00:00:05', expiry: 0, hostname: null, clientId: null, line: 1 };
  const neighbour = { address: '10.0.0.5', family: 'ipv4', mac: '02:00:00:00:00:05', state: 'STALE', freshness: 'stale', ageMs: 0 };
  const fake = fakeDispatch({ 'get-vm': okReply({ state: 'stopped', desired: 'running' }), 'start-vm': errorReply('IMAGE_NOT_FOUND', 'no image "tiny"') });
  const findings = [
    { job: 'leases', kind: 'stale-lease', target: 'lease', reason: 'test', action: 'reap', step: 'release-lease', lease, serverDuid: null },
    { job: 'leases', kind: 'stale-neighbour', target: 'neighbour', reason: 'test', action: 'reap', step: 'delete-neighbour', entry: neighbour },
    { job: 'orphans', kind: 'dead-record', target: record.id, reason: 'test', action: 'reap', step: 'restart', record },
  ] as unknown as Finding[];
  const rows = await carryOut(findings, { options, hostId: 'h1', log: quiet, signal: new AbortController().signal, dispatch: fake.dispatch });
  assert.deepEqual(
    rows.map((r) => [r.target, r.outcome, r.error?.slice(0, r.error.indexOf(':'))]),
    [
      ['lease', 'failed', 'SWEEP_ACTION_FAILED'],
      ['neighbour', 'failed', 'SWEEP_ACTION_FAILED'],
      [record.id, 'failed', 'IMAGE_NOT_FOUND'],
    ],
  );
  assert.match(rows[0]?.error ?? '', /no-dhcp_release.*not found/);
});

test('report — more findings than the report lists are counted as omitted, not reported as a job that could not be read', async (t) => {
  // Before: 501 findings gave errors: [{code: 'SWEEP_INVENTORY_FAILED', …}], which means "not swept", and
  // counted the run in runsWithErrors with its summary logged at warn.
  const stateDir = await tempDir(t, 'cloudlet-sweep-rows-');
  const old = new Date(Date.now() - 3_600_000);
  const letters = (n: number) => Array.from({ length: 8 }, (_, i) => String.fromCharCode(97 + (Math.floor(n / 26 ** i) % 26))).join('');
  for (let i = 0; i < 501; i++) {
    const folder = join(stateDir, `h1.${letters(i)}`);
    await mkdir(folder);
    await utimes(folder, old, old);
  }
  const options = resolveSweeperOptions(sweeperOptionsSchema.parse({ jobs: { orphans: { action: 'reap' } } }), { stateDir, ipBinary: '/bin/true' });
  const report = await runSweep({ hostId: 'h1', options, log: quiet, signal: new AbortController().signal }, { jobs: ['orphans'], dryRun: true, trigger: 'message' });
  assert.deepEqual(report.errors, []);
  assert.equal(report.summary.found, 501);
  assert.equal(report.actions.length, 500);
  assert.equal(report.actionsOmitted, 1);
  assert.equal(report.ignoredOmitted, 0);
});

test('service — a start whose scheduling fails leaves no relay open: a sweep-now finds no sweeper', async (t) => {
  // Before: the relay channel was opened before the schedules; when scheduling threw, the channel stayed
  // open with no stop hook to close it, and took sweep requests for a sweeper that never started.
  const stateDir = await tempDir(t, 'cloudlet-sweep-start-');
  const options = resolveSweeperOptions(sweeperOptionsSchema.parse({ jobs: { orphans: { action: 'log' } } }), { stateDir, ipBinary: '/bin/true' });
  // Past the options check (which refuses it since ae71440): what any other failure to schedule looks like.
  options.jobs.orphans!.schedule = '0 0 1 * 1#5';
  const host = { id: 'h1', agentVersion: 'test', startedAt: Date.now() };
  const service = new SweeperService({ options, host, log: quiet, emitEvent: async () => undefined, dispatch: async () => ({ ok: false, error: { code: 'X', message: 'unused' } }) as DispatchReply });
  assert.throws(() => service.start(), /Could not find next matching date/);
  await assert.rejects(requestSweep(host, { dryRun: true }, { signal: new AbortController().signal, onProgress: () => undefined, acceptTimeoutMs: 1_000 }), { code: 'SWEEPER_NOT_RUNNING' });

  // A job scheduled before the one that fails (leases comes first) is let go of too, not left running with
  // nobody to stop it.
  const two = resolveSweeperOptions(sweeperOptionsSchema.parse({ jobs: { orphans: { action: 'log' }, leases: { interface: 'br0' } } }), { stateDir, ipBinary: '/bin/true' });
  two.jobs.orphans!.schedule = '0 0 1 * 1#5';
  const second = new SweeperService({ options: two, host: { ...host, id: 'h2' }, log: quiet, emitEvent: async () => undefined, dispatch: async () => ({ ok: false, error: { code: 'X', message: 'unused' } }) as DispatchReply });
  assert.throws(() => second.start(), /Could not find next matching date/);
  const left = [...cron.getTasks().values()].filter((task) => task.name?.startsWith('sweeper-h2-'));
  assert.deepEqual(left.map((task) => task.name), []);
});

/** A process standing in for an orphan QEMU (a `sleep`, killed when the test ends), and its VM folder. */
async function plantOrphan(t: TestContext, dir: string) {
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.after(() => sleeper.kill('SIGKILL'));
  const pid = sleeper.pid!;
  const { startTicks } = parseStat(await readFile(`/proc/${pid}/stat`, 'utf8'))!;
  await mkdir(join(dir, 'h1.orphanxx'));
  return { pid, vmId: 'h1.orphanxx', startTicks, ageMs: 1e9, tap: null, mac: null, qmpSocket: null };
}

test('claims — a folder, tap or orphan whose VM id create-vm or delete-vm holds a claim on is skipped, untouched; released, the step runs', async (t) => {
  const dir = await tempDir(t);
  const options = resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: { stateDir: dir, ipBinary: join(dir, 'no-ip') }, jobs: { orphans: { action: 'reap' } } }));
  const bare = { id: 'h1.barexxxx', path: join(dir, 'h1.barexxxx'), ageMs: 1e9, hasDisk: true, entries: ['disk.qcow2'] };
  await mkdir(bare.path);
  await writeFile(join(bare.path, 'disk.qcow2'), '');
  const orphan = await plantOrphan(t, dir);
  const { pid } = orphan;

  const claims = [await holdClaim(dir, bare.id, 'create-vm'), await holdClaim(dir, orphan.vmId, 'delete-vm'), await holdClaim(dir, 'h1.tapxxxxx', 'create-vm')];
  assert.deepEqual(await removeBareFolder(options, bare), { outcome: 'skipped', detail: 'create-vm is at work on h1.barexxxx meanwhile' });
  assert.deepEqual(await reapOrphan(options, orphan), { outcome: 'skipped', detail: 'delete-vm is at work on h1.orphanxx meanwhile' });
  // A tap is named for the VM id of this host with its letters: clttapxxxxx is h1.tapxxxxx's.
  assert.deepEqual(await settleTap(options, 'h1', 'clttapxxxxx', true), { outcome: 'skipped', detail: 'create-vm is at work on h1.tapxxxxx meanwhile' });
  assert.equal(await exists(bare.path), true);
  assert.equal(await exists(join(dir, orphan.vmId)), true);
  assert.equal(await exists(`/proc/${pid}`), true, 'the orphan was not killed');

  for (const claim of claims) await rm(claim);
  assert.deepEqual(await removeBareFolder(options, bare), { outcome: 'done', detail: 'removed with its overlay disk' });
  assert.deepEqual(await reapOrphan(options, orphan), { outcome: 'done', detail: 'killed; folder removed' });
  assert.equal(await exists(bare.path), false);
  assert.equal(await exists(join(dir, orphan.vmId)), false);
  assert.deepEqual(await readdir(join(dir, '.claims')), [], 'the sweeper released its claims');
});

test('claims — an orphan QEMU whose folder a create has taken over (its mark holds) is left for that create to end', async (t) => {
  const dir = await tempDir(t);
  const options = resolveSweeperOptions(sweeperOptionsSchema.parse({ qemu: { stateDir: dir }, jobs: { orphans: { action: 'reap' } } }));
  const orphan = await plantOrphan(t, dir);
  const { pid } = orphan;
  await writeFile(join(dir, orphan.vmId, 'creating'), JSON.stringify({ pid: process.pid, agentStartedAt: 1, until: Date.now() + 60_000, request: 'req-1' }));
  assert.deepEqual(await reapOrphan(options, orphan), { outcome: 'skipped', detail: 'create-vm is at work on it meanwhile' });
  assert.equal(await exists(`/proc/${pid}`), true);
  assert.equal(await exists(join(dir, orphan.vmId, 'creating')), true);
});
