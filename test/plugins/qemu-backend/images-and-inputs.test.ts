import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { createOverlay, listImages, resolveImage } from '../../../plugins/qemu-backend/images.ts';
import { qemuArgv } from '../../../plugins/qemu-backend/qemu-args.ts';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import { createVmPayload, stopVmPayload, vmRefPayload } from '../../../plugins/qemu-backend/schemas.ts';
import { randomMac, tapName } from '../../../plugins/qemu-backend/network.ts';
import { listRecords, readRecord, vmPaths, writeRecord, type RecordProblem, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { runProgram } from '../../../plugins/qemu-backend/run.ts';
import { readPid } from '../../../plugins/qemu-backend/processes.ts';
import { tempDir } from '../../helpers.ts';

async function imagesFixture(t: Parameters<typeof tempDir>[0]) {
  const root = await tempDir(t, 'cloudlet-images-');
  const images = join(root, 'images');
  await mkdir(join(images, 'tiny'), { recursive: true });
  await writeFile(join(images, 'tiny', 'vmlinuz'), 'kernel');
  await writeFile(join(images, 'tiny', 'initrd.img'), 'initrd');
  assert.equal((await runProgram(['qemu-img', 'create', '-q', '-f', 'qcow2', join(images, 'base.qcow2'), '16M'])).code, 0);
  assert.equal((await runProgram(['qemu-img', 'create', '-q', '-f', 'raw', join(images, 'plain.raw'), '1M'])).code, 0);
  // A secret outside the folder, and a symlink that tries to reach it.
  await writeFile(join(root, 'secret.qcow2'), 'not yours');
  await symlink(join(root, 'secret.qcow2'), join(images, 'escape.qcow2'));
  return { root, images };
}

test('images — disk and kernel images are listed; a symlink out of the folder is neither listed nor usable', async (t) => {
  const { images } = await imagesFixture(t);
  assert.deepEqual(await listImages(images), ['base', 'plain', 'tiny']);
  const base = await resolveImage(images, 'base', 'qemu-img');
  assert.deepEqual(base, { kind: 'disk', name: 'base', path: join(images, 'base.qcow2'), format: 'qcow2' });
  assert.equal((await resolveImage(images, 'plain', 'qemu-img')).kind, 'disk');
  assert.equal(((await resolveImage(images, 'plain', 'qemu-img')) as { format: string }).format, 'raw');
  assert.equal((await resolveImage(images, 'tiny', 'qemu-img')).kind, 'kernel');
  await assert.rejects(resolveImage(images, 'escape', 'qemu-img'), (error: { code: string }) => error.code === 'IMAGE_NOT_FOUND');
});

test('images — a qcow2 whose backing file or data file lies outside the folder is refused; a chain inside it is fine', async (t) => {
  const { root, images } = await imagesFixture(t);
  const qemuImg = async (...args: string[]) => assert.equal((await runProgram(['qemu-img', ...args])).code, 0, args.join(' '));
  await qemuImg('create', '-q', '-f', 'raw', join(root, 'host-disk.raw'), '1M');
  // As a downloaded image could be made: QEMU would open the host file behind it for the guest.
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', join(root, 'host-disk.raw'), '-F', 'raw', join(images, 'backed-out.qcow2'));
  await qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${join(root, 'data.raw')},data_file_raw=on`, join(images, 'data-out.qcow2'), '1M');
  // The same escape one link further down the chain, and behind a ".raw" name that is really qcow2.
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'backed-out.qcow2', '-F', 'qcow2', join(images, 'deep-out.qcow2'));
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', join(root, 'host-disk.raw'), '-F', 'raw', join(images, 'disguised.raw'));
  for (const [name, what] of [['backed-out', 'backing file'], ['data-out', 'data file'], ['deep-out', 'backing file'], ['disguised', 'backing file']] as const) {
    await assert.rejects(resolveImage(images, name, 'qemu-img'), (error: { code: string; message: string }) => {
      assert.equal(error.code, 'IMAGE_INVALID', name);
      assert.match(error.message, new RegExp(`uses ${what} .*outside the images folder`), name);
      return true;
    });
  }
  // A chain that stays inside the folder (a base updated by an overlay of its own) is a usable image.
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(images, 'base-v2.qcow2'));
  assert.deepEqual(await resolveImage(images, 'base-v2', 'qemu-img'), { kind: 'disk', name: 'base-v2', path: join(images, 'base-v2.qcow2'), format: 'qcow2' });
});

test('images — a backing file in another format (a vmdk whose extent is a host file) is refused, even inside the folder', async (t) => {
  // Before, only backing and data files were checked: a vmdk inside the folder names its extents itself, and
  // a FLAT extent may be any host file. The guest then read it through its overlay.
  const { root, images } = await imagesFixture(t);
  await writeFile(join(root, 'secret.bin'), Buffer.alloc(1024 * 1024, 'HOST-SECRET-DATA'));
  const descriptor = ['# Disk DescriptorFile', 'version=1', 'CID=fffffffe', 'parentCID=ffffffff', 'createType="monolithicFlat"', `RW 2048 FLAT "${join(root, 'secret.bin')}" 0`, ''];
  await writeFile(join(images, 'flat.vmdk'), descriptor.join('\n'));
  assert.equal((await runProgram(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'flat.vmdk', '-F', 'vmdk', join(images, 'evil.qcow2')])).code, 0);
  await assert.rejects(resolveImage(images, 'evil', 'qemu-img'), (error: { code: string; message: string }) => {
    assert.equal(error.code, 'IMAGE_INVALID');
    assert.match(error.message, /uses backing file .*flat\.vmdk in format "vmdk"; only qcow2 and raw files may back an image/);
    return true;
  });
});

test('images — an unknown image is refused with the list of what exists', async (t) => {
  const { images } = await imagesFixture(t);
  await assert.rejects(resolveImage(images, 'debian-13', 'qemu-img'), (error: { code: string; message: string; details: { available: string[] } }) => {
    assert.equal(error.code, 'IMAGE_NOT_FOUND');
    assert.match(error.message, /available: base, plain, tiny/);
    assert.deepEqual(error.details.available, ['base', 'plain', 'tiny']);
    return true;
  });
});

test('images — an overlay is a qcow2 whose backing file is the base, with its format', async (t) => {
  const { root, images } = await imagesFixture(t);
  const overlay = join(root, 'overlay.qcow2');
  await createOverlay('qemu-img', { path: join(images, 'base.qcow2'), format: 'qcow2' }, overlay);
  const info = JSON.parse((await runProgram(['qemu-img', 'info', '--output=json', overlay])).stdout) as Record<string, string>;
  assert.equal(info.format, 'qcow2');
  assert.equal(info['backing-filename'], join(images, 'base.qcow2'));
  assert.equal(info['backing-filename-format'], 'qcow2');
});

test('inputs — path traversal, bad names and absurd sizes are refused by the payload schemas', () => {
  const bad = [
    { image: '../etc/passwd', memory: 128, vcpus: 1 },
    { image: 'a/b', memory: 128, vcpus: 1 },
    { image: '..', memory: 128, vcpus: 1 },
    { image: 'x..y', memory: 128, vcpus: 1 },
    { image: 'ok', memory: 128, vcpus: 1, name: 'web,file=/etc/shadow' },
    { image: 'ok', memory: 128, vcpus: 1, name: '-name' },
    { image: 'ok', memory: 10 ** 12, vcpus: 1 },
    { image: 'ok', memory: 0, vcpus: 1 },
    { image: 'ok', memory: 128, vcpus: 0 },
    { image: 'ok', memory: 128.5, vcpus: 1 },
    { image: 'ok', memory: 128, vcpus: 1, extra: true },
  ];
  for (const payload of bad) assert.equal(createVmPayload.safeParse(payload).success, false, JSON.stringify(payload));
  assert.equal(createVmPayload.safeParse({ image: 'debian-12.genericcloud', memory: 512, vcpus: 2, name: 'web-1' }).success, true);
  for (const vm of ['node1', 'node1.ABCDEFGH', 'node1.abc', '../x.abcdefgh', 'node1.abcdefgh;rm']) {
    assert.equal(vmRefPayload.safeParse({ vm }).success, false, vm);
  }
  assert.equal(stopVmPayload.safeParse({ vm: 'node1.abcdefgh', timeoutMs: -1 }).success, false);
});

test('inputs — options refuse paths QEMU would split at a comma, and long interface names', () => {
  const problems = qemuOptionsSchema.safeParse({ imagesDir: '/srv/images,readonly=off', network: { mode: 'bridge', bridge: 'a-very-long-bridge' } });
  assert.equal(problems.success, false);
  const paths = problems.error?.issues.map((i) => i.path.join('.'));
  assert.deepEqual(paths?.sort(), ['imagesDir', 'network.bridge']);
});

test('qemu argv — an array with our ids and paths only; the display name never reaches QEMU', () => {
  const options = qemuOptionsSchema.parse({ imagesDir: '/srv/images', stateDir: '/var/lib/cloudlet/qemu', network: { mode: 'bridge', bridge: 'br0' } });
  const id = 'node1.abcdefgh';
  const record: VmRecord = {
    v: 1,
    id,
    host: 'node1',
    name: 'web,evil=1',
    image: 'base',
    imageKind: 'disk',
    memoryMiB: 256,
    vcpus: 2,
    mac: '02:00:00:00:00:01',
    network: { mode: 'bridge', bridge: 'br0', tap: tapName('clt', id) },
    autostart: false,
    desired: 'running',
    createdAt: 'x',
    updatedAt: 'x',
  };
  const argv = qemuArgv(options, record, { kind: 'disk', name: 'base', path: '/srv/images/base.qcow2', format: 'qcow2' }, vmPaths(options.stateDir, id), 'tcg');
  assert.equal(argv[0], 'qemu-system-x86_64');
  assert.ok(!argv.join(' ').includes('evil'));
  assert.deepEqual(argv.slice(argv.indexOf('-name'), argv.indexOf('-name') + 2), ['-name', 'cloudlet-node1.abcdefgh']);
  assert.ok(argv.includes('tap,id=net0,ifname=cltabcdefgh,script=no,downscript=no'));
  assert.ok(argv.includes('virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01'));
  assert.ok(argv.includes(`file=${vmPaths(options.stateDir, id).disk},format=qcow2,if=virtio`));
  assert.ok(argv.includes('-daemonize') && argv.includes('-pidfile'));
  assert.equal(tapName('clt', id).length <= 15, true);
});

test('network — MACs are locally administered unicast and unique on the host', () => {
  const taken = new Set<string>();
  for (let i = 0; i < 500; i++) {
    const mac = randomMac(taken);
    assert.match(mac, /^02(:[0-9a-f]{2}){5}$/);
    assert.ok(!taken.has(mac));
    taken.add(mac);
  }
});

test('state — records are written whole and junk in the state folder is ignored', async (t) => {
  const dir = await tempDir(t);
  const record: VmRecord = {
    v: 1,
    id: 'h1.abcdefgh',
    host: 'h1',
    image: 'base',
    imageKind: 'disk',
    memoryMiB: 64,
    vcpus: 1,
    mac: '02:00:00:00:00:02',
    network: { mode: 'none' },
    autostart: true,
    desired: 'running',
    createdAt: new Date().toISOString(),
    updatedAt: '',
  };
  await writeRecord(dir, record);
  await mkdir(join(dir, 'not-a-vm'));
  await mkdir(join(dir, 'h1.broken'));
  const records = await listRecords(dir);
  assert.deepEqual(
    records.map((r) => r.id),
    ['h1.abcdefgh'],
  );
  assert.equal(records[0]?.autostart, true);
});

test('state — a vm.json that is not a record of this VM is refused naming the file and what is wrong, never read into argv', async (t) => {
  // Before: null stopped the agent's start (reconcile threw), {} failed list-vms for the whole host, a
  // torn one gave a bare JSON error, a FIFO blocked the thread for good, a symlink to /etc/passwd put its
  // first line in the error, and tampered fields (a MAC with ",romfile=…") went into QEMU's argv.
  const dir = await tempDir(t);
  const good: VmRecord = {
    v: 1, id: 'h1.goodgood', host: 'h1', image: 'base', imageKind: 'disk', memoryMiB: 64, vcpus: 1, mac: '02:00:00:00:00:02',
    network: { mode: 'bridge', bridge: 'br0', tap: 'cltgoodgood' }, autostart: false, desired: 'running', createdAt: '2030-01-01T00:00:00.000Z', updatedAt: '',
  };
  await writeRecord(dir, good);
  const bad: Record<string, string | ((file: string) => Promise<void>)> = {
    'h1.nullnull': 'null',
    'h1.emptyobj': '{}',
    'h1.tornfile': '{"v": 1, "id": "h1.tornfile", "ho',
    'h1.otherido': JSON.stringify({ ...good, id: 'h1.goodgood' }),
    'h1.macinjct': JSON.stringify({ ...good, id: 'h1.macinjct', mac: '02:aa:bb:cc:dd:01,romfile=/etc/shadow' }),
    'h1.memorybd': JSON.stringify({ ...good, id: 'h1.memorybd', memoryMiB: '64,maxmem=1T' }),
    'h1.tapinjct': JSON.stringify({ ...good, id: 'h1.tapinjct', network: { mode: 'bridge', bridge: 'br0', tap: 'x,script=/bin/sh' } }),
    'h1.fifofifo': async (file) => void execFileSync('mkfifo', [file]),
    'h1.linkedto': async (file) => symlink('/etc/passwd', file),
    'h1.foldered': async (file) => mkdir(file),
  };
  for (const [id, content] of Object.entries(bad)) {
    await mkdir(join(dir, id));
    const file = vmPaths(dir, id).record;
    if (typeof content === 'string') await writeFile(file, content);
    else await content(file);
  }
  const problems: RecordProblem[] = [];
  assert.deepEqual((await listRecords(dir, problems)).map((r) => r.id), ['h1.goodgood']);
  assert.deepEqual(problems.map((p) => p.vm).sort(), Object.keys(bad).sort());
  for (const id of Object.keys(bad)) {
    await assert.rejects(readRecord(dir, id), (error: { code: string; message: string; details: { vm: string; file: string } }) => {
      assert.equal(error.code, 'VM_RECORD_INVALID', id);
      assert.equal(error.details.file, vmPaths(dir, id).record);
      assert.ok(error.message.startsWith(`the record of ${id} (${vmPaths(dir, id).record}) `), error.message);
      assert.doesNotMatch(error.message, /root:/);
      return true;
    });
  }
  assert.match(problems.find((p) => p.vm === 'h1.macinjct')?.problem ?? '', /^mac: /);
  assert.match(problems.find((p) => p.vm === 'h1.otherido')?.problem ?? '', /names another VM/);
  assert.match(problems.find((p) => p.vm === 'h1.fifofifo')?.problem ?? '', /not a regular file/);
  assert.deepEqual({ ...(await readRecord(dir, 'h1.goodgood')), updatedAt: '' }, good);
  // A FIFO as the pidfile is no pid, not a read that never returns.
  execFileSync('mkfifo', [vmPaths(dir, 'h1.goodgood').pidfile]);
  assert.equal(await readPid(vmPaths(dir, 'h1.goodgood').pidfile), undefined);
});

test('options — limits.maxVcpus above what the machine type takes is refused at config check, naming the limit', () => {
  // Before, 300 passed, and every create-vm asking for more than 255 vCPUs failed with a retryable QEMU_FAILED
  // ("Invalid SMP CPUs 300. The max CPUs supported by machine 'pc-i440fx-7.2' is 255").
  const parse = (machine: string, maxVcpus: number) => qemuOptionsSchema.safeParse({ imagesDir: '/srv/images', machine, limits: { maxVcpus } });
  const refused = parse('pc', 300);
  assert.equal(refused.success, false);
  assert.deepEqual(refused.error?.issues.map((i) => [i.path.join('.'), i.message]), [['limits.maxVcpus', 'at most 255 for machine "pc" (QEMU\'s own limit)']]);
  assert.equal(parse('pc', 255).success, true);
  assert.equal(parse('q35', 288).success, true);
  assert.equal(parse('q35', 289).success, false);
});

test('images — a kernel image\'s cmdline that is a FIFO, huge, or holds a NUL is IMAGE_INVALID; vmlinuz must be a file', { timeout: 20_000 }, async (t) => {
  // Before, a FIFO as cmdline blocked list-images and create-vm until someone wrote to it, and a cmdline of
  // any size was read whole and put on QEMU's command line.
  const { images } = await imagesFixture(t);
  const kernelImage = async (name: string) => {
    await mkdir(join(images, name));
    await writeFile(join(images, name, 'vmlinuz'), 'kernel');
    await writeFile(join(images, name, 'initrd.img'), 'initrd');
  };
  await kernelImage('fifo');
  execFileSync('mkfifo', [join(images, 'fifo', 'cmdline')]);
  await kernelImage('huge');
  await writeFile(join(images, 'huge', 'cmdline'), 'x'.repeat(5_000));
  await kernelImage('nul');
  await writeFile(join(images, 'nul', 'cmdline'), 'console=ttyS0\0rm');
  for (const [name, why] of [['fifo', /cmdline is not a regular file/], ['huge', /cmdline is larger than 4096 bytes/], ['nul', /cmdline holds a NUL/]] as const) {
    await assert.rejects(resolveImage(images, name, 'qemu-img'), (error: { code: string; message: string }) => {
      assert.equal(error.code, 'IMAGE_INVALID', name);
      assert.match(error.message, why, name);
      return true;
    });
  }
  await mkdir(join(images, 'dir'));
  await mkdir(join(images, 'dir', 'vmlinuz'));
  await writeFile(join(images, 'dir', 'initrd.img'), 'initrd');
  await assert.rejects(resolveImage(images, 'dir', 'qemu-img'), (error: { code: string }) => error.code === 'IMAGE_NOT_FOUND');
  await writeFile(join(images, 'tiny', 'cmdline'), 'console=ttyS0 quiet\n');
  assert.equal(((await resolveImage(images, 'tiny', 'qemu-img')) as { cmdline?: string }).cmdline, 'console=ttyS0 quiet');
});
