import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { access, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import { tempDir, until } from '../helpers.ts';
import { gatedQemu, startQemuHost, type QemuHost } from '../support/qemu-host.ts';

interface Vm {
  id: string;
  state: string;
  pid: number | null;
  mac: string;
  tap: string | null;
  host: string;
  qmpStatus?: string | null;
}

function ok<T>(reply: ReplyEnvelope): T {
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  return reply.result as T;
}

async function createTiny(host: QemuHost, extra: Record<string, unknown> = {}): Promise<Vm> {
  return ok<Vm>(await host.call('create-vm', { image: 'tiny', memory: 128, vcpus: 1, ...extra }));
}

async function processExists(host: QemuHost, vm: string): Promise<boolean> {
  return (await host.ns.exec(['pgrep', '-f', `cloudlet-${vm}`])).code === 0;
}

test('qemu — create streams allocating → starting → running and QMP reports the VM running', async (t) => {
  const host = await startQemuHost(t);
  const stages: string[] = [];
  const vm = ok<Vm>(await host.call('create-vm', { image: 'tiny', memory: 128, vcpus: 1, name: 'first' }, (p) => stages.push(p.stage)));
  assert.deepEqual(stages, ['allocating', 'starting', 'running']);
  assert.match(vm.id, /^qhost\.[a-z]{8}$/);
  assert.equal(vm.host, 'qhost');
  assert.equal(vm.state, 'running');
  assert.match(vm.mac, /^02(:[0-9a-f]{2}){5}$/);
  const got = ok<Vm>(await host.call('get-vm', { vm: vm.id }));
  assert.equal(got.qmpStatus, 'running');
  assert.equal(got.pid, vm.pid);
  // The tap exists inside the namespace, on the bridge.
  assert.match(await host.ns.run(['ip', '-o', 'link', 'show', 'dev', vm.tap!]), /master br0/);
  await host.waitForSerial(vm.id, 'cloudlet-guest: init');
});

test('qemu — two VMs at once, each with its own MAC, tap and process', async (t) => {
  const host = await startQemuHost(t);
  const [a, b] = await Promise.all([createTiny(host), createTiny(host)]);
  assert.notEqual(a.id, b.id);
  assert.notEqual(a.mac, b.mac);
  assert.notEqual(a.tap, b.tap);
  const listed = ok<{ vms: Vm[] }>(await host.call('list-vms', {}));
  assert.deepEqual(listed.vms.map((v) => [v.id, v.state]).sort(), [
    [a.id, 'running'],
    [b.id, 'running'],
  ].sort());
  await Promise.all([host.waitForSerial(a.id, 'cloudlet-guest: init'), host.waitForSerial(b.id, 'cloudlet-guest: init')]);
});

test('qemu — a graceful stop is honoured by the guest; stopping again says it was not running', async (t) => {
  const host = await startQemuHost(t);
  const vm = await createTiny(host);
  // Not before: a power button pressed earlier is not heard, and the stop waits out its timeout.
  await host.waitForSerial(vm.id, 'cloudlet-guest: power button armed');
  const stopped = ok<{ how: string; state: string }>(await host.call('stop-vm', { vm: vm.id }));
  assert.equal(stopped.how, 'powered-off');
  assert.equal(stopped.state, 'stopped');
  assert.match(await host.serialLog(vm.id), /cloudlet-guest: poweroff/);
  assert.equal(await processExists(host, vm.id), false);
  assert.equal((await host.ns.exec(['ip', 'link', 'show', 'dev', vm.tap!])).code !== 0, true, 'the tap was removed');
  const again = ok<{ how: string; already: boolean }>(await host.call('stop-vm', { vm: vm.id }));
  assert.deepEqual([again.how, again.already], ['already-stopped', true]);
});

test('qemu — a forced stop quits at once; start brings the VM back; start again says already running', async (t) => {
  const host = await startQemuHost(t);
  const vm = await createTiny(host);
  const stopped = ok<{ how: string }>(await host.call('stop-vm', { vm: vm.id, force: true }));
  assert.equal(stopped.how, 'quit');
  assert.equal(await processExists(host, vm.id), false);
  const started = ok<Vm & { already: boolean }>(await host.call('start-vm', { vm: vm.id }));
  assert.equal(started.state, 'running');
  assert.equal(started.already, false);
  assert.notEqual(started.pid, vm.pid);
  const twice = ok<{ already: boolean; hint: string }>(await host.call('start-vm', { vm: vm.id }));
  assert.equal(twice.already, true);
  assert.match(twice.hint, /already running/);
});

test('qemu — restart: a hard reset keeps the process, a graceful restart power-cycles it', async (t) => {
  const host = await startQemuHost(t);
  const vm = await createTiny(host);
  await host.waitForSerial(vm.id, 'cloudlet-guest: power button armed');
  const reset = ok<Vm & { how: string }>(await host.call('restart-vm', { vm: vm.id, mode: 'hard' }));
  assert.equal(reset.how, 'reset');
  assert.equal(reset.pid, vm.pid);
  // The reset guest boots again before it can hear the power button: its second "armed" line.
  await host.waitForSerial(vm.id, 'cloudlet-guest: power button armed', 60_000, 2);
  const cycled = ok<Vm & { how: string }>(await host.call('restart-vm', { vm: vm.id }));
  assert.equal(cycled.how, 'power-cycled');
  assert.equal(cycled.state, 'running');
  assert.notEqual(cycled.pid, vm.pid);
});

test('qemu — delete leaves no file, tap or process behind, and deleting again says so', async (t) => {
  const host = await startQemuHost(t);
  const vm = await createTiny(host);
  const deleted = ok<{ deleted: boolean; stopped: string }>(await host.call('delete-vm', { vm: vm.id }));
  assert.equal(deleted.deleted, true);
  assert.equal(deleted.stopped, 'quit');
  await assert.rejects(access(join(host.stateDir, vm.id)));
  // Only its tombstone stays (QEMU.md 11.5): its id is never given out again. No claim is left held.
  assert.deepEqual((await readdir(host.stateDir)).sort(), ['.claims', '.deleted']);
  assert.deepEqual(await readdir(join(host.stateDir, '.claims')), []);
  assert.deepEqual((await readdir(join(host.stateDir, '.deleted'))).filter((name) => !name.startsWith('.')).sort(), [vm.id, 'requests']);
  assert.equal(await processExists(host, vm.id), false);
  assert.notEqual((await host.ns.exec(['ip', 'link', 'show', 'dev', vm.tap!])).code, 0);
  const again = ok<{ deleted: boolean; already: boolean; deletedAt: string }>(await host.call('delete-vm', { vm: vm.id }));
  assert.deepEqual([again.deleted, again.already], [false, true]);
  assert.match(again.deletedAt, /^\d{4}-\d\d-\d\dT/);
  const missing = await host.call('get-vm', { vm: vm.id });
  assert.equal(missing.error?.code, 'VM_NOT_FOUND');
  assert.match(missing.error?.message ?? '', /it was deleted at /);
});

test('qemu — a start whose QEMU fails takes its tap off the bridge again', async (t) => {
  // Before, start-vm set the tap up on the bridge, QEMU refused to start, and the tap stayed, up and on the
  // bridge with nothing behind it, until the next start or delete.
  const host = await startQemuHost(t);
  const vm = await createTiny(host);
  ok(await host.call('stop-vm', { vm: vm.id, force: true }));
  assert.notEqual((await host.ns.exec(['ip', 'link', 'show', 'dev', vm.tap!])).code, 0, 'the stop took the tap away');
  // A kernel QEMU cannot load: it exits before it runs the guest.
  await writeFile(join(host.dir, 'images', 'tiny', 'vmlinuz'), 'not a kernel');
  const failed = await host.call('start-vm', { vm: vm.id });
  assert.equal(failed.error?.code, 'QEMU_FAILED', JSON.stringify(failed.error));
  assert.notEqual((await host.ns.exec(['ip', 'link', 'show', 'dev', vm.tap!])).code, 0, 'no tap left on the bridge');
});

test('qemu — an agent restart re-attaches to the VMs still running', async (t) => {
  const host = await startQemuHost(t);
  const vm = await createTiny(host);
  await host.stopAgent();
  assert.equal(await processExists(host, vm.id), true, 'the VM outlives the agent');
  await host.startAgent();
  assert.match(host.agentOutput(), /"reattached":\["qhost\.[a-z]{8}"\]/);
  const got = ok<Vm>(await host.call('get-vm', { vm: vm.id }));
  assert.equal(got.state, 'running');
  assert.equal(got.pid, vm.pid);
  assert.equal(got.qmpStatus, 'running');
  const stopped = ok<{ how: string }>(await host.call('stop-vm', { vm: vm.id, force: true }));
  assert.equal(stopped.how, 'quit');
});

test('qemu — autostart brings a VM back after its QEMU died with the agent down', async (t) => {
  const host = await startQemuHost(t);
  const keep = await createTiny(host, { autostart: true });
  const other = await createTiny(host);
  await host.stopAgent();
  await host.ns.run(['pkill', '-KILL', '-f', 'cloudlet-qhost']);
  await new Promise((r) => setTimeout(r, 500));
  await host.startAgent();
  assert.match(host.agentOutput(), new RegExp(`"autostarted":\\["${keep.id.replace('.', '\\.')}"\\]`));
  const list = ok<{ vms: Vm[] }>(await host.call('list-vms', {}));
  const byId = new Map(list.vms.map((v) => [v.id, v]));
  assert.equal(byId.get(keep.id)?.state, 'running');
  assert.notEqual(byId.get(keep.id)?.pid, keep.pid);
  assert.equal(byId.get(other.id)?.state, 'stopped');
});

test('qemu — bad inputs are refused with specific errors and create nothing', async (t) => {
  const host = await startQemuHost(t, { limits: { maxVms: 1 } });
  const cases: [Record<string, unknown>, string, RegExp?][] = [
    [{ image: '../../etc/passwd', memory: 128, vcpus: 1 }, 'INVALID_PAYLOAD', /payload\.image/],
    [{ image: 'nonexistent', memory: 128, vcpus: 1 }, 'IMAGE_NOT_FOUND', /available: tiny, tiny-qga/],
    [{ image: 'tiny', memory: 4096, vcpus: 1 }, 'VM_LIMIT', /at most 512 MiB/],
    [{ image: 'tiny', memory: 10 ** 12, vcpus: 1 }, 'INVALID_PAYLOAD'],
    [{ image: 'tiny', memory: 128, vcpus: 64 }, 'VM_LIMIT'],
    [{ image: 'tiny', memory: 128, vcpus: 1, name: 'a,b=c' }, 'INVALID_PAYLOAD', /payload\.name/],
    [{ image: 'tiny', memory: 128, vcpus: 1, network: 'wifi' }, 'INVALID_PAYLOAD'],
  ];
  for (const [payload, code, message] of cases) {
    const reply = await host.call('create-vm', payload);
    assert.equal(reply.error?.code, code, `${JSON.stringify(payload)} → ${JSON.stringify(reply.error)}`);
    if (message) assert.match(reply.error?.message ?? '', message);
  }
  assert.equal(ok<{ vms: Vm[] }>(await host.call('list-vms', {})).vms.length, 0, 'nothing was created');
  assert.deepEqual(ok<{ images: unknown[] }>(await host.call('list-images', {})).images, [
    { name: 'tiny', kind: 'kernel' },
    { name: 'tiny-qga', kind: 'kernel' },
  ]);
  await createTiny(host);
  const full = await host.call('create-vm', { image: 'tiny', memory: 128, vcpus: 1 });
  assert.equal(full.error?.code, 'NO_CAPACITY');
  assert.equal(full.error?.message, 'host qhost is full: it has 1 of 1 VMs (limits.maxVms)');
  for (const vm of ['nosuch.abcdefgh', 'qhost.zzzzzzzz']) {
    const reply = await host.call('stop-vm', { vm });
    assert.equal(reply.error?.code, 'VM_NOT_FOUND');
  }
  const bad = await host.call('stop-vm', { vm: 'qhost.abc;reboot' });
  assert.equal(bad.error?.code, 'INVALID_PAYLOAD');
});

test('qemu — create from a disk image asks qemu-img about the base once, then makes the overlay', async (t) => {
  // Before, startVm resolved the image again right after create-vm had: two `qemu-img info` per create.
  const tools = await tempDir(t, 'cloudlet-qemu-img-');
  const calls = join(tools, 'calls.log');
  const wrapper = join(tools, 'qemu-img');
  await writeFile(wrapper, `#!/bin/sh\necho "$1" >> '${calls}'\nexec qemu-img "$@"\n`, { mode: 0o755 });
  const host = await startQemuHost(t, { qemuOptionsYaml: `      qemuImgBinary: ${wrapper}\n` });
  // A blank base: nothing boots from it, but QEMU runs, which is all create-vm waits for.
  const made = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(host.dir, 'images', 'blank.qcow2'), '16M'], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
  const vm = await createTiny(host, { image: 'blank' });
  assert.equal(vm.state, 'running');
  assert.deepEqual((await readFile(calls, 'utf8')).trim().split('\n'), ['info', 'create']);
  // A later start resolves the image again (it may have changed since): one more `info`, no `create`.
  ok(await host.call('stop-vm', { vm: vm.id, force: true }));
  ok(await host.call('start-vm', { vm: vm.id }));
  assert.deepEqual((await readFile(calls, 'utf8')).trim().split('\n'), ['info', 'create', 'info']);
});

/** A QEMU that takes `seconds` before it starts: a create-vm slow enough to act on while it runs. */
async function slowQemu(t: Parameters<typeof tempDir>[0], seconds: number): Promise<string> {
  const tools = await tempDir(t, 'cloudlet-slow-qemu-');
  const wrapper = join(tools, 'qemu');
  await writeFile(wrapper, `#!/bin/sh\nsleep ${seconds}\nexec qemu-system-x86_64 "$@"\n`, { mode: 0o755 });
  return wrapper;
}

/**
 * A QEMU that starts only once the test lets it (`release`), or after a minute should the test fail first:
 * what runs "while create-vm runs" then does so by construction, however slowly a loaded machine answers.
 */
test('qemu — a stop, delete or get sent while create-vm runs is told to retry (VM_NOT_READY); the create finishes whole', async (t) => {
  // Before, the record was written first: a stop sent on the "starting" progress raced the create (and could
  // kill a QEMU that was starting, or write vm.json back into a folder the failed create removed). Then, with
  // vm.json written last, a delete answered "already deleted" and the VM came up a moment later.
  const qemu = await gatedQemu(t);
  const host = await startQemuHost(t, { qemuOptionsYaml: `      qemuBinary: ${qemu.binary}\n` });
  let sent: (during: Promise<ReplyEnvelope>[]) => void = () => undefined;
  const sentDuring = new Promise<Promise<ReplyEnvelope>[]>((resolve) => (sent = resolve));
  const creating = host.call('create-vm', { image: 'tiny', memory: 128, vcpus: 1 }, (progress) => {
    const vm = (progress.detail as { vm?: string } | undefined)?.vm;
    if (progress.stage === 'starting' && vm) sent([host.call('stop-vm', { vm, force: true }), host.call('delete-vm', { vm }), host.call('get-vm', { vm })]);
  });
  // The create waits at its QEMU's start until all three are answered.
  const replies = await Promise.race([
    sentDuring.then((during) => Promise.all(during)),
    creating.then((reply) => Promise.reject(new Error(`create-vm answered without reporting "starting" with the new id: ${JSON.stringify(reply)}`))),
  ]);
  await qemu.release();
  for (const reply of replies) {
    assert.deepEqual([reply.error?.code, reply.error?.retryable], ['VM_NOT_READY', true], JSON.stringify(reply));
  }
  const created = ok<Vm>(await creating);
  assert.equal(created.state, 'running');
  const now = ok<Vm & { desired: string }>(await host.call('get-vm', { vm: created.id }));
  assert.deepEqual([now.state, now.desired, now.pid], ['running', 'running', created.pid]);
  assert.equal(await processExists(host, created.id), true);
});

test('qemu — a create-vm cancelled by its deadline leaves no VM, folder, tap or process behind', async (t) => {
  const host = await startQemuHost(t, { qemuOptionsYaml: `      qemuBinary: ${await slowQemu(t, 3)}\n` });
  const started = Date.now();
  const reply = await host.client.request(makeRequest({ type: 'create-vm', payload: { image: 'tiny', memory: 128, vcpus: 1 }, deadline: started + 1_500 }));
  assert.equal(reply.error?.code, 'DEADLINE_EXCEEDED', JSON.stringify(reply));
  // Past the moment the slow QEMU would have started, had the create not stopped it.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + 4_500 - Date.now())));
  assert.deepEqual(ok<{ vms: unknown[] }>(await host.call('list-vms', {})).vms, []);
  assert.deepEqual(await readdir(host.stateDir).catch(() => []), ['.claims']);
  assert.deepEqual(await readdir(join(host.stateDir, '.claims')), [], 'no claim is left held');
  assert.notEqual((await host.ns.exec(['pgrep', '-f', 'qemu-system-x86_64'])).code, 0, 'no QEMU runs');
  // qemu-backend's default tapPrefix is "clt".
  assert.deepEqual((await host.ns.exec(['ip', '-o', 'link', 'show'])).stdout.split('\n').filter((line) => line.includes(': clt')), []);
});

test('qemu — a create whose agent was killed mid-create, run again with its request id, makes one VM; once more answers with it', async (t) => {
  // Before, the run after the restart drew a new id: the dead run's folder stayed, with the QEMU it had
  // started running for nobody, and a run after a finished create made a second VM.
  const qemu = await gatedQemu(t);
  const host = await startQemuHost(t, { qemuOptionsYaml: `      qemuBinary: ${qemu.binary}\n` });
  const request = makeRequest({ type: 'create-vm', payload: { image: 'tiny', memory: 128, vcpus: 1 } });
  let announce: (vm: string) => void = () => undefined;
  const announced = new Promise<string>((resolve) => (announce = resolve));
  const first = host.client.request(request, {
    onProgress: (progress) => {
      const vm = (progress.detail as { vm?: string } | undefined)?.vm;
      if (progress.stage === 'starting' && vm) announce(vm);
    },
  });
  const vm = await Promise.race([announced, first.then((reply) => Promise.reject(new Error(`create-vm answered before "starting": ${JSON.stringify(reply)}`)), (error: unknown) => Promise.reject(error))]);
  // Killed once its QEMU is on the way (the gate holds it), which "starting" comes just before.
  const qemuOnItsWay = async () => (await host.ns.exec(['pgrep', '-f', qemu.binary])).code === 0;
  await until(qemuOnItsWay, 30_000);
  assert.equal(await qemuOnItsWay(), true, 'the create reached its QEMU');
  host.agent.kill('SIGKILL');
  await host.agent.exited;
  await assert.rejects(first, { code: 'CONNECTION_LOST' });
  // The dead run's QEMU starts anyway (it was on its way), in a folder without vm.json.
  await qemu.release();
  await until(() => processExists(host, vm), 30_000);
  assert.equal(await processExists(host, vm), true, "the dead run's QEMU is running");
  await host.startAgent();

  const again = ok<Vm & { already: boolean }>(await host.client.request(request));
  assert.equal(again.id, vm, 'the same request comes to the same id');
  assert.equal(again.already, false);
  assert.match(host.agentOutput(), /a run of this request left the VM half-made/);
  const qemus = (await host.ns.run(['pgrep', '-f', `cloudlet-${vm}`])).trim().split('\n');
  assert.deepEqual(qemus, [String(again.pid)], 'one QEMU: the leftover one was ended');
  assert.deepEqual((await readdir(host.stateDir)).sort(), ['.claims', vm]);
  assert.deepEqual(await readdir(join(host.stateDir, '.claims')), []);

  const onceMore = ok<Vm & { already: boolean }>(await host.client.request(request));
  assert.deepEqual([onceMore.id, onceMore.already, onceMore.pid, onceMore.state], [vm, true, again.pid, 'running']);
  assert.deepEqual(ok<{ vms: Vm[] }>(await host.call('list-vms', {})).vms.map((v) => v.id), [vm]);
  await host.waitForSerial(vm, 'cloudlet-guest: init');
});
