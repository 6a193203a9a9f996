/**
 * A VM's pidfile is only a hint. When it is gone (deleted by hand, a restored backup) while the VM's QEMU
 * runs, the backend still finds that QEMU — by its `-name` and `-pidfile` in /proc — so start-vm does not
 * launch a second QEMU for the VM and stop-vm does stop it. And a pidfile naming a process that merely
 * mentions the VM (a `pgrep -af cloudlet-<id>` on a recycled pid) is not taken for the VM's QEMU.
 * Stand-in processes only: no QEMU is started.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test, { type TestContext } from 'node:test';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import { memoQemuScan, qemuProcessName, runningPid, waitForExit } from '../../../plugins/qemu-backend/processes.ts';
import { vmPaths, writeRecord, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { startVm, stopVm } from '../../../plugins/qemu-backend/vm-ops.ts';
import { processAlive, tempDir } from '../../helpers.ts';

function recordFor(id: string): VmRecord {
  return {
    v: 1,
    id,
    host: 'h1',
    image: 'x',
    imageKind: 'kernel',
    memoryMiB: 64,
    vcpus: 1,
    mac: '02:aa:bb:cc:dd:02',
    network: { mode: 'user' },
    autostart: false,
    desired: 'running',
    createdAt: '',
    updatedAt: '',
  } as VmRecord;
}

/** A process that lives until killed, with `args` after `--` on its command line (and `program` as its argv[0]). */
async function standIn(t: TestContext, args: string[], program?: string): Promise<ChildProcess & { pid: number }> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)', '--', ...args], { stdio: 'ignore', ...(program ? { argv0: program } : {}) });
  t.after(() => child.kill('SIGKILL'));
  await new Promise((resolve, reject) => child.once('spawn', resolve).once('error', reject));
  return child as ChildProcess & { pid: number };
}

async function setUp(t: TestContext, id: string) {
  const dir = await tempDir(t, 'cloudlet-lost-pidfile-');
  // A QEMU binary that cannot run: if the backend tried to launch a second QEMU, the test would see the error.
  const options = qemuOptionsSchema.parse({
    imagesDir: join(dir, 'images'),
    stateDir: join(dir, 'qemu'),
    qemuBinary: join(dir, 'no-qemu'),
    qemuImgBinary: join(dir, 'no-qemu-img'),
  });
  const record = recordFor(id);
  await writeRecord(options.stateDir, record);
  return { options, record, paths: vmPaths(options.stateDir, id) };
}

test('lost pidfile — a running QEMU whose pidfile is gone is found by its command line: start-vm reports it running, stop-vm stops it', async (t) => {
  const { options, record, paths } = await setUp(t, 'h1.lostpidf');
  const qemu = await standIn(t, ['-name', qemuProcessName(record.id), '-pidfile', paths.pidfile]);

  assert.equal(await runningPid(paths.pidfile, record.id), qemu.pid);
  // list-vms asks for every VM with one shared scan of /proc.
  const scan = memoQemuScan();
  assert.equal(await runningPid(paths.pidfile, record.id, scan), qemu.pid);
  assert.equal(await runningPid(vmPaths(options.stateDir, 'h1.otherxxx').pidfile, 'h1.otherxxx', scan), undefined);

  assert.deepEqual(await startVm(options, record), { pid: qemu.pid, already: true });
  assert.ok(processAlive(qemu.pid));

  // No monitor answers (there is no qmp.sock): stop-vm ends it the hard way, and says so.
  assert.equal(await stopVm(options, record, { force: true, timeoutMs: 1_000 }), 'killed');
  assert.equal(await runningPid(paths.pidfile, record.id), undefined);
});

test('lost pidfile — a wrapper that did not exec QEMU carries the same arguments: QEMU itself is the one found', async (t) => {
  const { record, paths } = await setUp(t, 'h1.wrapperx');
  const args = ['-name', qemuProcessName(record.id), '-pidfile', paths.pidfile];
  await standIn(t, args, '/bin/sh'); // started first: the lower pid, met first in /proc
  const qemu = await standIn(t, args, '/usr/bin/qemu-system-x86_64');
  assert.equal(await runningPid(paths.pidfile, record.id), qemu.pid);
});

test('pidfile — a QEMU started when the state folder was spelled another way (a symlink) is still found through its pidfile', async (t) => {
  const { options, record, paths } = await setUp(t, 'h1.aliasedx');
  const alias = join(await tempDir(t, 'cloudlet-alias-'), 'state');
  await symlink(options.stateDir, alias);
  const qemu = await standIn(t, ['-name', qemuProcessName(record.id), '-pidfile', join(alias, record.id, 'qemu.pid')]);
  await writeFile(paths.pidfile, `${qemu.pid}\n`);
  assert.equal(await runningPid(paths.pidfile, record.id), qemu.pid);
  // …and through /proc once its pidfile is lost too.
  await rm(paths.pidfile);
  assert.equal(await runningPid(paths.pidfile, record.id), qemu.pid);
});

test('stale pidfile — a pid that is now the QEMU of the same VM id under another state folder is not this VM\'s, and is never signalled', async (t) => {
  const { options, record, paths } = await setUp(t, 'h1.otherqem');
  const other = await standIn(t, ['-name', qemuProcessName(record.id), '-pidfile', join('/elsewhere', record.id, 'qemu.pid')]);
  await writeFile(paths.pidfile, `${other.pid}\n`);
  assert.equal(await runningPid(paths.pidfile, record.id), undefined);
  assert.equal(await stopVm(options, record, { force: true, timeoutMs: 1_000 }), 'already-stopped');
  assert.ok(processAlive(other.pid));
});

test('waitForExit — a process counts as gone when it is gone, not when its command line is empty (a QEMU exiting, a kernel thread)', async () => {
  // Kernel threads have an empty command line and never exit: the stand-in for a QEMU that has dropped its
  // memory while it still holds its tap and its disk's lock.
  const kernelThread = readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .find((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8') === '' && readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') S ');
      } catch {
        return false;
      }
    });
  assert.ok(kernelThread, 'no sleeping kernel thread in /proc (is this a PID namespace?)');
  assert.equal(await waitForExit(Number(kernelThread), 100), false);
});

test('lost pidfile — a QEMU of the same VM id under another state folder is not this VM\'s', async (t) => {
  const { options, record, paths } = await setUp(t, 'h1.otherdir');
  const elsewhere = await standIn(t, ['-name', qemuProcessName(record.id), '-pidfile', join('/elsewhere', record.id, 'qemu.pid')]);
  assert.equal(await runningPid(paths.pidfile, record.id), undefined);
  assert.equal(await stopVm(options, record, { force: true, timeoutMs: 1_000 }), 'already-stopped');
  assert.ok(processAlive(elsewhere.pid), 'a QEMU that is not this VM\'s was signalled');
});

test('stale pidfile — a recycled pid whose process only mentions the VM (pgrep -af cloudlet-<id>) is not its QEMU and is never signalled', async (t) => {
  const { options, record, paths } = await setUp(t, 'h1.recycled');
  const bystander = await standIn(t, ['-af', qemuProcessName(record.id)]);
  await writeFile(paths.pidfile, `${bystander.pid}\n`);
  assert.equal(await runningPid(paths.pidfile, record.id), undefined);
  assert.equal(await stopVm(options, record, { force: true, timeoutMs: 1_000 }), 'already-stopped');
  assert.ok(processAlive(bystander.pid), 'a process that is not the VM\'s QEMU was killed');
});
