/**
 * `cloudlet vm …` and `cloudlet image list` end to end: the CLI outside, a real qemu-backend agent inside a
 * network namespace (TCG), on the local transport. RabbitMQ's half is ops-cli-vm-amqp.test.ts.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { until } from '../helpers.ts';
import { startDnsmasq } from '../support/netns.ts';
import { gatedQemu, startQemuHost } from '../support/qemu-host.ts';
import { json, vmCli, type Vm } from '../support/vm-cli.ts';
import { vmIdForRequest } from '../../plugins/qemu-backend/vm-id.ts';

test('vm cli — local transport: create with progress and --wait-ip, list, show, ip, console-log, stop, start, restart, delete', async (t) => {
  const host = await startQemuHost(t, {
    beforeAgent: async (ns) => {
      await startDnsmasq(ns);
    },
    pluginsYaml: () => `  - use: ip-discovery-guest-agent\n  - use: metrics\n    options:\n      listen: 127.0.0.1:9477\n      vmStatesMaxAgeMs: 100\n`,
  });
  const cli = vmCli(host.configFile);
  // The endpoint listens inside the namespace: scrape it from there.
  const scrape = async () => host.ns.run([process.execPath, '-e', 'fetch("http://127.0.0.1:9477/metrics").then((r) => r.text()).then((t) => process.stdout.write(t))']);

  const images = json<{ ok: boolean; images: { host: string; name: string; kind: string }[]; hosts: { host: string; ok: boolean }[] }>(await cli(['image', 'list', '--json']));
  assert.deepEqual(images.images.map((i) => [i.host, i.name, i.kind]), [['qhost', 'tiny', 'kernel'], ['qhost', 'tiny-qga', 'kernel']]);

  const missing = await cli(['vm', 'create', '--image', 'nosuch', '--memory', '128']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /error \[IMAGE_NOT_FOUND\] from qhost: [\s\S]*hint: run "cloudlet image list"/);

  // Not a terminal: one progress line per stage on stderr, the VM on stdout.
  const created = await cli(['vm', 'create', '--image', 'tiny-qga', '--memory', '128', '--name', 'web', '--wait-ip']);
  assert.equal(created.code, 0, created.stderr);
  // "waiting-for-ip" is shown only when the address is not known yet at the first ask: a guest that leases
  // before the agent asks (it happens under a quick TCG boot) goes straight from "confirming" to the address.
  assert.match(created.stderr, /… qhost: allocating[\s\S]*… qhost: starting[\s\S]*… qhost: running[\s\S]*confirming running\n(?:… qhost: waiting-for-ip[^\n]*\n)?… qhost: 10\.77\.0\.\d+\n/);
  const id = /^id: +(qhost\.[a-z]{8})$/m.exec(created.stdout)?.[1] as string;
  assert.ok(id, created.stdout);
  assert.match(created.stdout, /^state: +running$/m);
  assert.match(created.stdout, /^name: +web$/m);
  await host.waitForSerial(id, 'cloudlet-guest: lease');
  const leased = /cloudlet-guest: lease (\S+)/.exec(await host.serialLog(id))?.[1];
  assert.match(created.stdout, new RegExp(`^addresses: +${leased?.replace(/\./g, '\\.')}$`, 'm'));

  const listed = json<{ ok: boolean; vms: Vm[]; hosts: { host: string; ok: boolean; vms: number }[]; missing: string[] }>(await cli(['vm', 'list', '--json']));
  assert.equal(listed.ok, true);
  assert.deepEqual(listed.vms.map((v) => [v.id, v.name, v.state]), [[id, 'web', 'running']]);
  assert.deepEqual(listed.hosts, [{ host: 'qhost', ok: true, vms: 1 }]);
  assert.deepEqual(listed.missing, []);
  const table = await cli(['vm', 'list']);
  assert.match(table.stdout, new RegExp(`^ID +NAME +STATE +IMAGE +MEMORY +VCPUS +ADDRESSES\\n${id} +web +running +tiny-qga +128 MiB +1 +${leased?.replace(/\./g, '\\.')}$`, 'm'));

  const shown = json<{ ok: boolean; host: string; vm: Vm }>(await cli(['vm', 'show', id, '--json']));
  assert.deepEqual([shown.host, shown.vm.id, shown.vm.qmpStatus], ['qhost', id, 'running']);
  // The metrics plugin counts VMs by state.
  const metrics = await scrape();
  assert.match(metrics, /^cloudlet_vms\{state="running"\} 1$/m);
  assert.match(metrics, /^cloudlet_vms_known 1$/m);
  assert.match(metrics, /^cloudlet_messages_total\{type="create-vm",outcome="ok",code=""\} 1$/m);
  assert.match(metrics, /^cloudlet_messages_total\{type="create-vm",outcome="error",code="IMAGE_NOT_FOUND"\} 1$/m);
  const ip = json<{ vm: string; addresses: Vm['addresses']; strategies: string[] }>(await cli(['vm', 'ip', id, '--json']));
  assert.deepEqual(ip.addresses.filter((a) => a.family === 'ipv4').map((a) => [a.address, a.source]), [[leased, 'ip-discovery-guest-agent']]);
  assert.match((await cli(['vm', 'ip', id])).stdout, /^ADDRESS +FAMILY +SCOPE +SOURCE +AGE\n/);

  const log = json<{ text: string; lines: number; bytes: number; fileBytes: number; truncated: boolean }>(await cli(['vm', 'console-log', id, '--lines', '3', '--json']));
  assert.ok(log.lines <= 3 && log.lines > 0, JSON.stringify(log));
  assert.equal(log.truncated, true);
  assert.equal(log.text.replace(/\n$/, '').split('\n').length, log.lines);
  assert.ok((await host.serialLog(id)).includes(log.text), log.text);
  const small = json<{ bytes: number }>(await cli(['vm', 'console-log', id, '--bytes', '64', '--json']));
  assert.ok(small.bytes <= 64);
  assert.match((await cli(['vm', 'console-log', id])).stdout, /cloudlet-guest: lease/);

  const stopped = json<{ vm: Vm }>(await cli(['vm', 'stop', id, '--force', '--wait', '--json']));
  assert.deepEqual([stopped.vm.state, stopped.vm.how], ['stopped', 'quit']);
  // A stopped VM's address: the reason is that it is not running, not a missing plugin (as it read before).
  const stoppedIp = await cli(['vm', 'ip', id]);
  assert.equal(stoppedIp.stdout, `no address known for ${id}: the VM is not running\n`);
  const stoppedWait = await cli(['vm', 'ip', id, '--wait']);
  assert.equal(stoppedWait.code, 1, stoppedWait.stderr);
  assert.match(stoppedWait.stderr, new RegExp(`^hint: start it first: "cloudlet vm start ${id.replace('.', '\\.')}"$`, 'm'));
  const started = await cli(['vm', 'start', id, '--wait']);
  assert.equal(started.code, 0, started.stderr);
  assert.match(started.stdout, /^state: +running$/m);
  const reset = json<{ vm: Vm }>(await cli(['vm', 'restart', id, '--hard', '--json']));
  assert.deepEqual([reset.vm.state, reset.vm.how], ['running', 'reset']);

  const deleted = await cli(['vm', 'delete', id, '--wait', '--json']);
  assert.equal(deleted.code, 0, deleted.stderr);
  assert.deepEqual(json(deleted), { ok: true, host: 'qhost', vm: id, deleted: true, already: false, stopped: 'quit' });
  const gone = await cli(['vm', 'show', id]);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /error \[VM_NOT_FOUND\] from qhost[\s\S]*hint: run "cloudlet vm list"/);
  const again = await cli(['vm', 'delete', id]);
  assert.equal(again.code, 0);
  assert.match(again.stdout, new RegExp(`^${id.replace('.', '\\.')}: deleted already on qhost, at \\d{4}-\\d\\d-\\d\\dT`, 'm'));
  assert.equal((await cli(['vm', 'delete', 'qhost.neverwas'])).stdout, 'qhost.neverwas: no such VM on qhost (already deleted?)\n');
  assert.equal((await cli(['vm', 'list'])).stdout, 'no VMs\n');
  await new Promise((r) => setTimeout(r, 150)); // past vmStatesMaxAgeMs
  assert.doesNotMatch(await scrape(), /^cloudlet_vms\{/m);
});

test('vm cli — --request-id: the same id again answers with the VM it made; other settings are refused; a bad id is a usage error', async (t) => {
  const host = await startQemuHost(t);
  const cli = vmCli(host.configFile);
  const create = (...extra: string[]) => cli(['vm', 'create', '--image', 'tiny', '--memory', '128', ...extra]);

  const bad = await create('--request-id', 'two words');
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /error \[USAGE\]: --request-id must be 1–128 printable ASCII characters without spaces, found "two words"/);

  const made = json<{ vm: Vm & { already: boolean } }>(await create('--request-id', 'deploy-7', '--json'));
  assert.equal(made.vm.already, false);
  const again = await create('--request-id', 'deploy-7');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, new RegExp(`^id: +${made.vm.id.replace('.', '\\.')}$`, 'm'));
  assert.match(again.stderr, /^request deploy-7 made this VM already \(\S+\); nothing was done$/m);

  const reused = await create('--request-id', 'deploy-7', '--vcpus', '2');
  assert.equal(reused.code, 1, reused.stderr);
  assert.match(reused.stderr, new RegExp(`error \\[REQUEST_ID_REUSED\\] from qhost: request deploy-7 made VM ${made.vm.id.replace('.', '\\.')} already, with other settings: vcpus 2 \\(made with 1\\)`));
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms.map((v) => v.id), [made.vm.id]);

  // A repeat whose VM was stopped since: --wait fails at once (nothing would start it), after the VM.
  assert.equal((await cli(['vm', 'stop', made.vm.id, '--force'])).code, 0);
  const stoppedSince = await create('--request-id', 'deploy-7', '--wait');
  assert.equal(stoppedSince.code, 1, stoppedSince.stderr);
  assert.match(stoppedSince.stdout, /^state: +stopped$/m);
  assert.match(stoppedSince.stderr, new RegExp(`^error \\[VM_STOPPED\\]: ${made.vm.id.replace('.', '\\.')} was made by this request before and has been stopped since; nothing waits for it to run\nhint: start it: "cloudlet vm start ${made.vm.id.replace('.', '\\.')} --wait"$`, 'm'));

  // Once its VM is deleted, the id is refused: a new VM under the deleted one's id would be reached by a late
  // retry of the old delete (before, it made one).
  assert.equal((await cli(['vm', 'delete', made.vm.id])).code, 0);
  const remade = await create('--request-id', 'deploy-7', '--json');
  assert.equal(remade.code, 1, remade.stdout + remade.stderr);
  const refused = json<{ error: { code: string; details: { vm: string } } }>(remade);
  assert.deepEqual([refused.error.code, refused.error.details.vm], ['REQUEST_ID_REUSED', made.vm.id]);
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms, [], 'no VM made');
});

test('vm cli — a create cut off by its agent\'s death names its request id; create again with it makes no second VM', async (t) => {
  // Before, the CLI drew no id of its own to give: "check vm list before repeating a create" was all, and a
  // repeat made a second VM.
  const qemu = await gatedQemu(t);
  const host = await startQemuHost(t, { qemuOptionsYaml: `      qemuBinary: ${qemu.binary}\n` });
  const cli = vmCli(host.configFile);
  const creating = cli(['vm', 'create', '--image', 'tiny', '--memory', '128']);
  const qemuOnItsWay = async () => (await host.ns.exec(['pgrep', '-f', qemu.binary])).code === 0;
  await until(qemuOnItsWay, 30_000);
  assert.equal(await qemuOnItsWay(), true, 'the create reached its QEMU');
  host.agent.kill('SIGKILL');
  await host.agent.exited;
  const lost = await creating;
  assert.equal(lost.code, 4, lost.stderr);
  const hint = /^hint: the create may have run: run the same "cloudlet vm create" again with --request-id=(\S+); it answers with the VM that request made \(once the host is up and the create done\) instead of making a second one$/m.exec(lost.stderr);
  assert.ok(hint, lost.stderr);
  const requestId = hint[1] as string;

  // The dead run's QEMU comes up anyway; the agent comes back.
  const vm = vmIdForRequest('qhost', requestId);
  await qemu.release();
  const deadRunsQemu = async () => (await host.ns.exec(['pgrep', '-f', `cloudlet-${vm}`])).code === 0;
  await until(deadRunsQemu, 30_000);
  assert.equal(await deadRunsQemu(), true, "the dead run's QEMU is running");
  await host.startAgent();
  const again = json<{ vm: Vm & { already: boolean; pid: number } }>(await cli(['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', requestId, '--json']));
  assert.deepEqual([again.vm.id, again.vm.already, again.vm.state], [vm, false, 'running']);
  assert.deepEqual((await host.ns.run(['pgrep', '-f', `cloudlet-${vm}`])).trim().split('\n'), [String(again.vm.pid)]);
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms.map((v) => v.id), [vm]);
});

test('vm cli — find-create sees a create its host accepted that waits for its turn ("accepted"), not nothing', async (t) => {
  // Before (core API 1.10), a create waiting behind another for create-vm's one thread had left nothing on
  // disk, and find-create answered null: a repeat without --host on RabbitMQ could go to another host and
  // make a second VM there. The agent now tells find-create which creates it holds (seesInFlight).
  // The gate stays shut until released (or 4 minutes): the first create must hold the thread throughout.
  const qemu = await gatedQemu(t, { opensAfterS: 240 });
  const host = await startQemuHost(t, { qemuOptionsYaml: `      qemuBinary: ${qemu.binary}\n` });
  const cli = vmCli(host.configFile);
  const find = async (request: string) => json<{ found: string | null; vm?: string }>(await cli(['call', 'find-create', '--payload', JSON.stringify({ request })]));
  const create = (request: string) => cli(['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', request, '--json']);
  assert.deepEqual(await find('second-in-line'), { host: 'qhost', request: 'second-in-line', found: null }, 'nothing before it is sent');

  const first = create('first-in-line');
  await until(async () => (await find('first-in-line')).found === 'creating', 30_000);
  assert.equal((await find('first-in-line')).found, 'creating', 'the first create holds the thread (its QEMU waits at the gate)');
  const second = create('second-in-line');
  await until(async () => (await find('second-in-line')).found !== null, 30_000);
  assert.deepEqual(await find('second-in-line'), { host: 'qhost', request: 'second-in-line', found: 'accepted' }, 'the second, accepted and waiting for the thread, is seen');

  await qemu.release();
  const [made1, made2] = await Promise.all([first, second]);
  assert.equal(made1.code, 0, made1.stderr);
  assert.equal(made2.code, 0, made2.stderr);
  const vm2 = json<{ vm: Vm }>(made2).vm;
  assert.deepEqual(await find('second-in-line'), { host: 'qhost', request: 'second-in-line', found: 'vm', vm: vm2.id }, 'once made, its VM');
});
