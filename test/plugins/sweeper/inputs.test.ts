/** What the sweeper reads: command lines, /proc stat lines, iproute2 JSON, the state folder; and release commands. */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { readLeaseFile, releaseArgv } from '../../../plugins/sweeper/lease-table.ts';
import { parseTapLinks, tapPattern } from '../../../plugins/sweeper/links.ts';
import { classifyCommandLine, ownMonitorSocket, parseStat, scanProcesses } from '../../../plugins/sweeper/proc-scan.ts';
import { creatingMarkHolds, ownsVmId, scanStateDir } from '../../../plugins/sweeper/state-dir.ts';
import { qemuArgv } from '../../../plugins/qemu-backend/qemu-args.ts';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import { vmPaths, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { tempDir } from '../../helpers.ts';

const identity = { stateDir: '/var/lib/cloudlet/qemu', hostId: 'node1', qemuBinary: 'qemu-system-x86_64' };

function record(id: string, extra: Partial<VmRecord> = {}): VmRecord {
  return {
    v: 1,
    id,
    host: id.split('.')[0]!,
    image: 'tiny',
    imageKind: 'kernel',
    memoryMiB: 64,
    vcpus: 1,
    mac: '02:AA:00:00:00:01',
    network: { mode: 'bridge', bridge: 'br0', tap: `clt${id.split('.')[1]}` },
    autostart: false,
    desired: 'running',
    createdAt: '2030-01-01T00:00:00.000Z',
    updatedAt: '2030-01-01T00:00:00.000Z',
    ...extra,
  };
}

test('processes — a QEMU command line exactly as qemu-backend builds it is ours', () => {
  const options = qemuOptionsSchema.parse({ imagesDir: '/images', network: { mode: 'bridge', bridge: 'br0' } });
  const rec = record('node1.abcdefgh');
  const argv = qemuArgv(options, rec, { kind: 'kernel', name: 'tiny', kernel: '/k', initrd: '/i' }, vmPaths(options.stateDir, rec.id), 'tcg');
  assert.deepEqual(classifyCommandLine(argv, identity), { ours: true, vmId: 'node1.abcdefgh' });
});

test('processes — another host, another program, another state folder, or no cloudlet name: never ours', () => {
  const qemu = (name: string, pidfile = `/var/lib/cloudlet/qemu/${name.slice(9)}/qemu.pid`, program = '/usr/bin/qemu-system-x86_64') => [program, '-name', name, '-pidfile', pidfile];
  assert.equal(classifyCommandLine(['sleep', '1000'], identity), undefined);
  assert.equal(classifyCommandLine(qemu('other-thing'), identity), undefined);
  assert.deepEqual(classifyCommandLine(qemu('cloudlet-node2.abcdefgh'), identity), {
    ours: false,
    name: 'cloudlet-node2.abcdefgh',
    reason: "not this host's naming (cloudlet-node1.<8 letters>)",
  });
  // A host id that merely starts like ours.
  assert.equal((classifyCommandLine(qemu('cloudlet-node12.abcdefgh'), identity) as { ours: boolean }).ours, false);
  assert.match((classifyCommandLine(qemu('cloudlet-node1.abcdefgh', undefined, 'bash'), identity) as { reason: string }).reason, /not a QEMU process \(bash\)/);
  assert.match((classifyCommandLine(qemu('cloudlet-node1.abcdefgh', '/tmp/x/qemu.pid'), identity) as { reason: string }).reason, /-pidfile is not in this host's state folder/);
  assert.match((classifyCommandLine(['qemu-system-x86_64', '-name', 'cloudlet-node1.abcdefgh'], identity) as { reason: string }).reason, /-pidfile/);
  // The configured binary's name counts as QEMU too.
  assert.deepEqual(classifyCommandLine(qemu('cloudlet-node1.abcdefgh', undefined, '/opt/q/my-qemu'), { ...identity, qemuBinary: '/opt/q/my-qemu' }), { ours: true, vmId: 'node1.abcdefgh' });
  assert.equal(ownsVmId('node1', 'node1.abcdefgh'), true);
  assert.equal(ownsVmId('node1', 'node1.abcdefghi'), false);
  assert.equal(ownsVmId('node', 'node1.abcdefgh'), false);
});

test('processes — /proc/<pid>/stat: state and start time, whatever the name holds', () => {
  const fields = Array.from({ length: 50 }, (_, i) => String(i));
  fields[0] = 'S';
  fields[19] = '123456';
  assert.deepEqual(parseStat(`4242 (qemu (x) y) ${fields.join(' ')}`), { state: 'S', startTicks: 123456 });
  assert.equal(parseStat('4242 (short)'), undefined);
});

test('taps — only tun/tap links named prefix + 8 letters are listed', () => {
  const json = JSON.stringify([
    { ifname: 'cltabcdefgh', flags: ['BROADCAST', 'UP'], master: 'br0', linkinfo: { info_kind: 'tun', info_data: { type: 'tap', persist: true } } },
    { ifname: 'cltzzzzzzzz', flags: ['BROADCAST'], linkinfo: { info_kind: 'tun', info_data: { type: 'tap', persist: false } } },
    { ifname: 'cltabcdefg', flags: [], linkinfo: { info_kind: 'tun', info_data: { type: 'tap' } } },
    { ifname: 'cltabcdefgh1', flags: [], linkinfo: { info_kind: 'tun', info_data: { type: 'tap' } } },
    { ifname: 'tap0', flags: [], linkinfo: { info_kind: 'tun', info_data: { type: 'tap' } } },
    { ifname: 'cltqqqqqqqq', flags: [], linkinfo: { info_kind: 'tun', info_data: { type: 'tun' } } },
    { ifname: 'cltvvvvvvvv', flags: [], linkinfo: { info_kind: 'veth' } },
  ]);
  assert.deepEqual(parseTapLinks(json, tapPattern('clt')), [
    { name: 'cltabcdefgh', master: 'br0', up: true, persist: true },
    { name: 'cltzzzzzzzz', master: null, up: false, persist: false },
  ]);
  assert.deepEqual(parseTapLinks('', tapPattern('clt')), []);
  assert.throws(() => parseTapLinks('{}', tapPattern('clt')), /JSON array/);
});

test('leases — dhcp_release and dhcp_release6 argv, with the client id when there is one', () => {
  const tools = { interface: 'br0', releaseBinary: 'dhcp_release', release6Binary: 'dhcp_release6' };
  const v4 = { family: 'ipv4' as const, address: '10.0.0.5', mac: '02:00:00:00:00:05', expiry: 1, hostname: null, clientId: null, line: 1 };
  assert.deepEqual(releaseArgv(v4, null, tools), ['dhcp_release', 'br0', '10.0.0.5', '02:00:00:00:00:05']);
  assert.deepEqual(releaseArgv({ ...v4, clientId: '01:02:00:00:00:00:05' }, null, tools), ['dhcp_release', 'br0', '10.0.0.5', '02:00:00:00:00:05', '01:02:00:00:00:00:05']);
  const v6 = { ...v4, family: 'ipv6' as const, address: 'fd00::5', clientId: '00:03:00:01:02:00:00:00:00:05', iaid: 7 };
  assert.deepEqual(releaseArgv(v6, '00:01:00:01:aa', tools), [
    'dhcp_release6', '--iface', 'br0', '--ip', 'fd00::5', '--server-id', '00:01:00:01:aa', '--client-id', '00:03:00:01:02:00:00:00:00:05', '--iaid', '7',
  ]);
  assert.match(releaseArgv(v6, null, tools) as string, /server DUID/);
  // dhcp_release6 builds an IA_NA option only (its --dry-run packet shows option 3): a temporary address's
  // release would name a binding dnsmasq does not have, run after run. Before, it was tried anyway.
  assert.match(releaseArgv({ ...v6, temporary: true }, '00:01:00:01:aa', tools) as string, /temporary address \(IA_TA\).*cannot release/);
});

test('leases — a lease file that is a FIFO is refused at once, not waited on (the sweep queue would stall)', { timeout: 20_000 }, async (t) => {
  const dir = await tempDir(t);
  const fifo = join(dir, 'dnsmasq.leases');
  execFileSync('mkfifo', [fifo]);
  await assert.rejects(readLeaseFile(fifo), /dnsmasq\.leases is a FIFO, not a regular file/);
  assert.deepEqual(await readLeaseFile(join(dir, 'none.leases')), { leases: [], serverDuid: null, missing: true });
});

test('state folder — records, foreign and unreadable records, bare folders and stray files are told apart', async (t) => {
  const dir = await tempDir(t);
  const write = async (id: string, file: string, text: string) => {
    await mkdir(join(dir, id), { recursive: true });
    await writeFile(join(dir, id, file), text);
  };
  await write('node1.aaaaaaaa', 'vm.json', JSON.stringify(record('node1.aaaaaaaa', { autostart: true })));
  await write('node1.aaaaaaaa', 'vm.json.99.tmp', '{');
  await write('node1.bbbbbbbb', 'vm.json', JSON.stringify(record('node1.bbbbbbbb', { host: 'node2' })));
  await write('node1.cccccccc', 'vm.json', '{ not json');
  // Beside an unreadable record the temp file may be its one good copy; in another host's folder it is not
  // ours; beside a foreign record neither: none of them is a stray file to remove.
  await write('node1.cccccccc', 'vm.json.77.tmp', JSON.stringify(record('node1.cccccccc')));
  await write('node1.bbbbbbbb', 'vm.json.78.tmp', '{');
  await write('node1.dddddddd', 'disk.qcow2', 'overlay');
  await write('node2.eeeeeeee', 'disk.qcow2', 'overlay');
  await write('node2.eeeeeeee', 'vm.json.4242.tmp', '{');
  await write('not-a-vm', 'disk.qcow2', 'x');
  await writeFile(join(dir, 'notes.txt'), 'operator notes');
  const old = new Date(Date.now() - 3_600_000);
  await utimes(join(dir, 'node1.dddddddd'), old, old);

  const scan = await scanStateDir(dir, 'node1', Date.now());
  assert.deepEqual(scan.records, [
    { id: 'node1.aaaaaaaa', mac: '02:aa:00:00:00:01', tap: 'cltaaaaaaaa', autostart: true, desired: 'running', createdAtMs: Date.parse('2030-01-01T00:00:00.000Z') },
  ]);
  assert.deepEqual(scan.foreign, [{ id: 'node1.bbbbbbbb', host: 'node2', mac: '02:aa:00:00:00:01', tap: 'cltbbbbbbbb' }]);
  assert.deepEqual(scan.unreadable, ['node1.cccccccc']);
  assert.deepEqual(scan.bareFolders.map((f) => [f.id, f.hasDisk, f.entries, f.ageMs > 3_000_000]), [['node1.dddddddd', true, ['disk.qcow2'], true]]);
  assert.deepEqual(scan.foreignBareFolders, ['node2.eeeeeeee']);
  assert.deepEqual(scan.strayFiles.map((f) => f.path), [join(dir, 'node1.aaaaaaaa', 'vm.json.99.tmp')]);
  assert.deepEqual(await scanStateDir(join(dir, 'missing'), 'node1', Date.now()), { records: [], foreign: [], unreadable: [], bareFolders: [], foreignBareFolders: [], strayFiles: [] });
});

test('state folder — a creating mark holds while its time lasts and its writer lives; a stale, torn or missing one does not', async (t) => {
  const dir = await tempDir(t);
  const now = Date.now();
  const folders = {
    'node1.aaaaaaaa': JSON.stringify({ pid: process.pid, agentStartedAt: 1, until: now + 60_000 }),
    'node1.bbbbbbbb': JSON.stringify({ pid: process.pid, agentStartedAt: 1, until: now - 1 }),
    'node1.cccccccc': JSON.stringify({ pid: 2 ** 22 + 1, agentStartedAt: 1, until: now + 60_000 }), // above pid_max: no such process
    'node1.dddddddd': '{"pid": 1',
    'node1.eeeeeeee': undefined,
  };
  for (const [id, mark] of Object.entries(folders)) {
    await mkdir(join(dir, id));
    if (mark !== undefined) await writeFile(join(dir, id, 'creating'), mark);
    const old = new Date(now - 3_600_000);
    await utimes(join(dir, id), old, old);
  }
  const holds = await Promise.all(Object.keys(folders).map((id) => creatingMarkHolds(join(dir, id), now)));
  assert.deepEqual(holds, [true, false, false, false, false]);
  const scan = await scanStateDir(dir, 'node1', now);
  assert.deepEqual(scan.bareFolders.map((f) => [f.id, f.beingCreated === true]), Object.keys(folders).map((id, i) => [id, i === 0]));
});

test('processes — a process that only calls itself QEMU, or names another VM\'s monitor, is never trusted with a VM', async (t) => {
  // A reviewer's attack: any local user can start a process whose argv[0] is qemu-system-x86_64 and whose
  // -name and -pidfile say "an orphan of this host", with -qmp naming a healthy VM's monitor. The sweeper's
  // `stop` then sent that healthy VM system_powerdown and quit.
  const stateDir = await tempDir(t, 'cloudlet-sweep-forged-');
  const forged = 'node1.forgedxx';
  const healthyMonitor = vmPaths(stateDir, 'node1.healthyy').qmp;
  // `sleep 600; :`, not `sleep 600`: bash would exec a lone command, and the process would be sleep.
  const child = spawn('/bin/bash', ['-c', 'sleep 600; :', 'x', '-name', `cloudlet-${forged}`, '-pidfile', vmPaths(stateDir, forged).pidfile, '-qmp', `unix:${healthyMonitor},server=on,wait=off`], {
    argv0: 'qemu-system-x86_64',
    stdio: 'ignore',
    detached: true, // its own process group: bash and its `sleep` go together
  });
  t.after(() => process.kill(-child.pid!, 'SIGKILL'));
  await once(child, 'spawn');
  const scan = await scanProcesses({ stateDir, hostId: 'node1', qemuBinary: 'qemu-system-x86_64' }, Date.now());
  assert.equal(scan.ours.find((process) => process.pid === child.pid), undefined, 'a bash that calls itself QEMU is not ours');
  assert.match(scan.lookalikes.find((process) => process.pid === child.pid)?.reason ?? '', /not a QEMU process \(its program is \/.*bash\)/);

  // Even a real QEMU is asked only on its own VM's monitor socket, never on one its arguments name.
  const argv = ['/usr/bin/qemu-system-x86_64', '-name', `cloudlet-${forged}`, '-pidfile', vmPaths(stateDir, forged).pidfile];
  assert.equal(ownMonitorSocket([...argv, '-qmp', `unix:${healthyMonitor},server=on,wait=off`], stateDir, forged), null);
  assert.equal(ownMonitorSocket([...argv, '-qmp', `unix:${vmPaths(stateDir, forged).qmp},server=on,wait=off`], stateDir, forged), vmPaths(stateDir, forged).qmp);
  assert.equal(ownMonitorSocket(argv, stateDir, forged), null);
});
