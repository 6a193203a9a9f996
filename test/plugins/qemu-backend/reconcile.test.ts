/**
 * The start-up reconcile against a VM whose QEMU runs but whose monitor is stuck. A stand-in process
 * carries the VM's QEMU name and pidfile path (what the backend checks in /proc) and a stand-in QMP socket greets and
 * negotiates but never answers `query-status`: the agent must not wait on it to start.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import { qemuProcessName } from '../../../plugins/qemu-backend/processes.ts';
import { reconcileVms } from '../../../plugins/qemu-backend/reconcile.ts';
import { queryStatus } from '../../../plugins/qemu-backend/vm-ops.ts';
import { vmPaths, writeRecord, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { claimsDir } from '../../../plugins/qemu-backend/vm-claim.ts';
import { tempDir } from '../../helpers.ts';
import { holdClaim } from './claim-helpers.ts';
import { QMP_GREETING, standInSocket } from '../../support/stand-in-socket.ts';

const record: VmRecord = {
  v: 1,
  id: 'h1.stuckmon',
  host: 'h1',
  image: 'x',
  imageKind: 'kernel',
  memoryMiB: 64,
  vcpus: 1,
  mac: '02:aa:bb:cc:dd:01',
  network: { mode: 'user' },
  autostart: false,
  desired: 'running',
  createdAt: '',
  updatedAt: '',
} as VmRecord;

test('reconcile and get-vm — a running VM whose monitor never answers is picked up again, with a warning, without holding the agent\'s start or get-vm', { timeout: 60_000 }, async (t) => {
  const stateDir = await tempDir(t, 'cloudlet-reconcile-');
  await writeRecord(stateDir, record);
  const paths = vmPaths(stateDir, record.id);

  // "QEMU": a process whose argv holds the VM's `-name` and `-pidfile`, as the real one's does.
  const fake = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)', '--', '-name', qemuProcessName(record.id), '-pidfile', paths.pidfile], { stdio: 'ignore' });
  t.after(() => fake.kill('SIGKILL'));
  await writeFile(paths.pidfile, `${fake.pid}\n`);

  // Its monitor: greets, accepts qmp_capabilities, then never answers again.
  await standInSocket(t, paths.qmp, (socket) => {
    socket.setEncoding('utf8');
    socket.write(QMP_GREETING);
    socket.on('data', (chunk: string) => {
      for (const line of chunk.split('\n').filter(Boolean)) {
        const command = JSON.parse(line) as { execute: string; id?: string };
        if (command.execute === 'qmp_capabilities') socket.write(`${JSON.stringify({ return: {}, id: command.id })}\n`);
      }
    });
  });

  const warnings: string[] = [];
  const log = { trace() {}, debug() {}, info() {}, warn: (_o: unknown, message?: string) => void warnings.push(String(message)), error() {} };
  const started = Date.now();
  const summary = await reconcileVms(qemuOptionsSchema.parse({ imagesDir: '/i', stateDir }), log, Date.now());
  const tookMs = Date.now() - started;

  assert.deepEqual(summary.reattached, [record.id]);
  assert.deepEqual(summary.failed, []);
  assert.ok(warnings.some((w) => /QMP socket does not answer/.test(w)), JSON.stringify(warnings));
  // A did-not-hang bound, not a timing target: the old check waited QMP's 10 s command timeout.
  assert.ok(tookMs < 6_000, `reconcile took ${tookMs} ms with one stuck monitor`);

  // get-vm asks the same way: running, without a QMP status, and just as bounded.
  const asked = Date.now();
  const status = await queryStatus(qemuOptionsSchema.parse({ imagesDir: '/i', stateDir }), record);
  assert.deepEqual(status, { state: 'running', pid: fake.pid });
  assert.ok(Date.now() - asked < 6_000, `get-vm's status check took ${Date.now() - asked} ms`);
});

test('reconcile — autostart VMs are started at most 4 at a time, and each one is tried', { timeout: 60_000 }, async (t) => {
  // Before, an agent starting with 50 autostart VMs down ran 50 QEMU starts at once.
  const dir = await tempDir(t, 'cloudlet-reconcile-');
  const stateDir = join(dir, 'state');
  const images = join(dir, 'images');
  await mkdir(join(images, 'x'), { recursive: true });
  await writeFile(join(images, 'x', 'vmlinuz'), 'kernel');
  await writeFile(join(images, 'x', 'initrd.img'), 'initrd');
  const ids = Array.from({ length: 10 }, (_, i) => `h1.autosta${String.fromCharCode(97 + i)}`);
  for (const id of ids) await writeRecord(stateDir, { ...record, id, autostart: true, desired: 'running' });
  const log = join(dir, 'qemu.log');
  // Stands in for QEMU: logs its start and end, and starts nothing (each start then fails, which is fine here).
  const qemu = join(dir, 'qemu');
  await writeFile(qemu, `#!/bin/sh\necho start >> ${log}\nsleep 0.3\necho end >> ${log}\nexit 1\n`);
  await chmod(qemu, 0o755);
  const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
  const summary = await reconcileVms(qemuOptionsSchema.parse({ imagesDir: images, stateDir, qemuBinary: qemu, network: { mode: 'none' } }), quiet, Date.now());
  assert.deepEqual(summary.failed.map((f) => f.vm).sort(), ids);
  let running = 0;
  let most = 0;
  const lines = (await readFile(log, 'utf8')).trim().split('\n');
  for (const line of lines) {
    running += line === 'start' ? 1 : -1;
    most = Math.max(most, running);
  }
  assert.equal(lines.filter((l) => l === 'start').length, 10);
  assert.ok(most <= 4 && most >= 2, `${most} QEMU starts at once`);
});

test('reconcile — a QEMU still running for a folder without vm.json (a create that never finished) is ended; the folder stays; a VM with an unusable vm.json keeps its QEMU', { timeout: 60_000 }, async (t) => {
  const stateDir = await tempDir(t, 'cloudlet-reconcile-');
  const standInQemu = async (id: string) => {
    const paths = vmPaths(stateDir, id);
    await mkdir(paths.dir, { recursive: true });
    const fake = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)', '--', '-name', qemuProcessName(id), '-pidfile', paths.pidfile], { stdio: 'ignore' });
    t.after(() => fake.kill('SIGKILL'));
    await writeFile(paths.pidfile, `${fake.pid}\n`);
    return fake;
  };
  const halfMade = await standInQemu('h1.halfmade');
  await writeFile(join(vmPaths(stateDir, 'h1.halfmade').dir, 'disk.qcow2'), 'its overlay');
  const unusable = await standInQemu('h1.unusable');
  await writeFile(vmPaths(stateDir, 'h1.unusable').record, '{"torn');
  await mkdir(vmPaths(stateDir, 'h1.emptydir').dir, { recursive: true });
  const exited = new Promise((resolve) => halfMade.once('exit', resolve));

  const log = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
  const summary = await reconcileVms(qemuOptionsSchema.parse({ imagesDir: '/i', stateDir, ipBinary: '/nonexistent/ip' }), log, Date.now());
  assert.deepEqual(summary.endedHalfMade, ['h1.halfmade']);
  await exited;
  assert.equal(unusable.exitCode, null, 'the VM whose record cannot be used still runs');
  assert.equal(unusable.signalCode, null);
  assert.equal(await readFile(join(vmPaths(stateDir, 'h1.halfmade').dir, 'disk.qcow2'), 'utf8'), 'its overlay', 'the folder is left for a rerun, delete-vm or the sweeper');
  assert.deepEqual(summary.failed.map((f) => f.vm), ['h1.unusable']);
});

test('reconcile — claims on VM ids left by takers that were killed are cleared; a fresh one stays', async (t) => {
  // Before, such an entry stayed until its VM id was claimed again (for an id nobody claims again, for ever).
  const stateDir = await tempDir(t, 'cloudlet-reconcile-');
  const agentStartedAt = Date.now() - 1_000; // before the fresh entry (this pid's, this run's) was made
  const gone = spawnSync('true').pid!;
  await holdClaim(stateDir, 'h1.leftover', 'delete-vm', { pid: gone });
  await holdClaim(stateDir, 'h1.another', 'sweeper', { until: Date.now() - 1, n: 2 });
  await holdClaim(stateDir, 'h1.fresh', 'create-vm', { n: 3 });
  const log = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
  const summary = await reconcileVms(qemuOptionsSchema.parse({ imagesDir: '/i', stateDir, ipBinary: '/nonexistent/ip' }), log, agentStartedAt);
  assert.equal(summary.staleClaimsRemoved, 2);
  assert.deepEqual(await readdir(claimsDir(stateDir)), ['h1.fresh.3']);
});
