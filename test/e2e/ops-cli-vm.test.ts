/**
 * `cloudlet vm …` and `cloudlet image list` end to end: the CLI outside, a real qemu-backend agent inside a
 * network namespace (TCG), on the local transport and on RabbitMQ (through the broker relay).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cliBin, runCli, spawnAgent, tempDir, testkitPath, until, writeConfig, type CliResult } from '../helpers.ts';
import { relayBrokerIntoNetns } from '../support/broker-relay.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';
import { startDnsmasq } from '../support/netns.ts';
import { gatedQemu, startQemuHost, type QemuHost, type QemuHostOptions } from '../support/qemu-host.ts';
import { vmIdForRequest } from '../../plugins/qemu-backend/vm-id.ts';
import { generateKey } from '../../core/security/keys.ts';


const sweepStub = fileURLToPath(new URL('../fixtures/plugins/sweep-stub/index.ts', import.meta.url));

interface Vm {
  id: string;
  host: string;
  name: string | null;
  state: string;
  how?: string;
  qmpStatus?: string | null;
  addresses: { address: string; family: string; source: string }[];
}

function json<T>(result: CliResult): T {
  assert.ok(result.stdout.trim().startsWith('{'), `not JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** A qemu-backend host ("qnode" unless named) on RabbitMQ, reaching the broker from its namespace through a relay. */
async function startBrokerQemuHost(t: TestContext, transport: (url: string) => string, options: QemuHostOptions): Promise<QemuHost> {
  let brokerUrl = '';
  return startQemuHost(t, {
    hostId: 'qnode',
    ...options,
    beforeAgent: async (ns) => {
      brokerUrl = (await relayBrokerIntoNetns(t, ns)).url;
    },
    transportYaml: () => transport(brokerUrl),
  });
}

const vmCli = (config: string) => (args: string[], timeoutMs = 120_000) => runCli([...args, '--config', config], { timeoutMs });

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

test('vm cli — RabbitMQ: create goes to a host with capacity, VM commands to the host in the id, lists gather every host', async (t) => {
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 1500\n`;
  const host = await startBrokerQemuHost(t, transport, { pluginsYaml: () => `  - use: routing-direct\n  - use: routing-fanout\n  - use: ${sweepStub}\n` });
  // A second host without a VM backend: it answers broadcasts, takes no any-host creates.
  const plain = await writeConfig(
    host.dir,
    'plain.yaml',
    `host:\n  id: plain\n${transport(SHARED_BROKER)}state:\n  dir: ${join(host.dir, 'plain-state')}\nplugins:\n  - use: routing-direct\n    options:\n      acceptAny: false\n  - use: routing-fanout\n  - use: ${testkitPath}\n  - use: ${sweepStub}\n`,
  );
  const plainAgent = spawnAgent(t, plain); // registers its stop hook at once
  // After both agents' stop hooks (they run in registration order), or they would re-declare the topology.
  t.after(() => deletePrefix(SHARED_BROKER, prefix, ['qnode', 'plain']));
  await plainAgent;
  const client = await writeConfig(host.dir, 'client.yaml', transport(SHARED_BROKER));
  const cli = vmCli(client);
  await new Promise((r) => setTimeout(r, 600));

  const created = json<{ ok: boolean; host: string; vm: Vm }>(await cli(['vm', 'create', '--image', 'tiny', '--memory', '128', '--json']));
  assert.deepEqual([created.host, created.vm.host, created.vm.state], ['qnode', 'qnode', 'running']);
  const id = created.vm.id;

  const listed = await cli(['vm', 'list', '--json']);
  assert.equal(listed.code, 0, listed.stderr);
  const list = json<{ vms: Vm[]; hosts: { host: string; ok: boolean; error?: { code: string } }[]; missing: string[] }>(listed);
  assert.deepEqual(list.vms.map((v) => v.id), [id]);
  assert.deepEqual(list.hosts.map((h) => [h.host, h.ok, h.error?.code]), [['plain', false, 'UNKNOWN_TYPE'], ['qnode', true, undefined]]);
  assert.deepEqual(list.missing, []);

  const images = json<{ images: { host: string; name: string }[] }>(await cli(['image', 'list', '--json']));
  assert.deepEqual(images.images.map((i) => `${i.host}/${i.name}`), ['qnode/tiny', 'qnode/tiny-qga']);

  // No --host: the VM id names its owner.
  const shown = json<{ host: string; vm: Vm }>(await cli(['vm', 'show', id, '--json']));
  assert.deepEqual([shown.host, shown.vm.state], ['qnode', 'running']);
  await host.waitForSerial(id, 'cloudlet-guest: init');
  assert.match((await cli(['vm', 'console-log', id])).stdout, /cloudlet-guest: init/);
  const unknownHost = await cli(['vm', 'show', 'nohost.abcdefgh']);
  assert.equal(unknownHost.code, 1);
  assert.match(unknownHost.stderr, /error \[UNKNOWN_HOST\][\s\S]*hint: run "cloudlet hosts"/);
  const noBackend = await cli(['vm', 'create', '--image', 'tiny', '--memory', '128', '--host', 'plain']);
  assert.equal(noBackend.code, 1);
  assert.match(noBackend.stderr, /error \[UNKNOWN_TYPE\] from plain/);

  const swept = json<{ hosts: { host: string; ok: boolean }[] }>(await cli(['sweep', '--dry-run', '--json']));
  assert.deepEqual(swept.hosts.map((h) => [h.host, h.ok]), [['plain', true], ['qnode', true]]);

  const stopped = json<{ host: string; vm: Vm }>(await cli(['vm', 'stop', id, '--force', '--json']));
  assert.deepEqual([stopped.host, stopped.vm.state], ['qnode', 'stopped']);
  const deleted = json<{ host: string; deleted: boolean }>(await cli(['vm', 'delete', id, '--wait', '--json']));
  assert.deepEqual([deleted.host, deleted.deleted], ['qnode', true]);

  // The same --request-id again, without --host: the host's handler answers it (create-vm handles its
  // repeats), with the VM as it is now; before, the stored first reply came back, stale once the VM was
  // stopped or deleted.
  const once = ['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', `create-${prefix}`, '--json'];
  const made = json<{ host: string; vm: Vm & { already: boolean } }>(await cli(once));
  assert.equal(made.vm.already, false);
  const repeated = json<{ host: string; vm: Vm & { already: boolean } }>(await cli(once));
  assert.deepEqual([repeated.host, repeated.vm.id, repeated.vm.already], ['qnode', made.vm.id, true]);
  const reused = await cli(once.map((arg) => (arg === '128' ? '256' : arg)));
  assert.equal(reused.code, 1, reused.stdout);
  assert.deepEqual([json<{ host: string; error: { code: string } }>(reused).host, json<{ error: { code: string } }>(reused).error.code], ['qnode', 'REQUEST_ID_REUSED']);
  assert.equal(json<{ vm: Vm }>(await cli(['vm', 'stop', made.vm.id, '--force', '--json'])).vm.state, 'stopped');
  const stoppedSince = await cli([...once, '--wait']);
  assert.equal(stoppedSince.code, 1);
  assert.deepEqual([json<{ vm: Vm }>(stoppedSince).vm.state, json<{ wait: { error: { code: string } } }>(stoppedSince).wait.error.code], ['stopped', 'VM_STOPPED']);
  // Deleted since: the id is refused by the host (REQUEST_ID_REUSED, from the VM's tombstone), not used for a
  // new VM under the deleted one's id.
  assert.equal((await cli(['vm', 'delete', made.vm.id])).code, 0);
  const remade = await cli([...once, '--host', 'qnode']);
  assert.equal(remade.code, 1, remade.stdout);
  const refused = json<{ host: string; error: { code: string; details: { vm: string; deletedAt: string } } }>(remade);
  assert.deepEqual([refused.host, refused.error.code, refused.error.details.vm], ['qnode', 'REQUEST_ID_REUSED', made.vm.id]);
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms, []);
});

test('vm cli — RabbitMQ, signed requests: a create sent again with its --request-id is answered by the handler as things are now', async (t) => {
  // Before, a host that requires signatures answered the repeat from its stored first reply ("running",
  // already: false) even after the VM was stopped or deleted; on the local socket it was REPLAYED.
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 3000\n`;
  const keysDir = await tempDir(t);
  const ops = generateKey();
  const hostKey = generateKey();
  await writeFile(join(keysDir, 'ops.key'), ops.privateKeyPem, { mode: 0o600 });
  await writeFile(join(keysDir, 'qnode.key'), hostKey.privateKeyPem, { mode: 0o600 });
  const host = await startBrokerQemuHost(t, transport, {
    securityYaml: `security:\n  requireSignatures: true\n  hostKeyFile: ${join(keysDir, 'qnode.key')}\n  clients:\n    - name: ops\n      publicKey: ${ops.publicKey}\n`,
    pluginsYaml: () => `  - use: routing-direct\n  - use: routing-fanout\n`,
  });
  t.after(() => deletePrefix(SHARED_BROKER, prefix, ['qnode']));
  const client = await writeConfig(
    host.dir,
    'client.yaml',
    `${transport(SHARED_BROKER)}security:\n  clientKeyFile: ${join(keysDir, 'ops.key')}\n  hostKeys:\n    qnode: ${hostKey.publicKey}\n  requireSignedReplies: true\n`,
  );
  const cli = vmCli(client);
  const once = ['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', `signed-${prefix}`, '--json'];
  const made = json<{ host: string; vm: Vm & { already: boolean } }>(await cli(once));
  assert.deepEqual([made.host, made.vm.state, made.vm.already], ['qnode', 'running', false]);
  const repeated = json<{ vm: Vm & { already: boolean } }>(await cli(once));
  assert.deepEqual([repeated.vm.id, repeated.vm.already], [made.vm.id, true], 'the handler answered, not the stored reply');
  assert.equal(json<{ vm: Vm }>(await cli(['vm', 'stop', made.vm.id, '--force', '--json'])).vm.state, 'stopped');
  assert.deepEqual(json<{ vm: Vm }>(await cli(once)).vm.state, 'stopped');
  assert.equal((await cli(['vm', 'delete', made.vm.id])).code, 0);
  const remade = await cli(once);
  assert.equal(remade.code, 1, remade.stdout + remade.stderr);
  assert.deepEqual(json<{ error: { code: string } }>(remade).error.code, 'REQUEST_ID_REUSED');
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms, [], 'no VM made');
});

test('vm cli — RabbitMQ, two hosts: a create sent again with its --request-id and no --host is answered by the host where it ran; a host that cannot say stops it', async (t) => {
  // Before, the repeat went to any host: the other one made a second VM (and after the delete, a new one).
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 3000\n`;
  const routing = () => `  - use: routing-direct\n  - use: routing-fanout\n`;
  const qa = await startBrokerQemuHost(t, transport, { hostId: 'qa', pluginsYaml: routing });
  const qb = await startBrokerQemuHost(t, transport, { hostId: 'qb', pluginsYaml: routing });
  t.after(() => deletePrefix(SHARED_BROKER, prefix, ['qa', 'qb']));
  const cli = vmCli(await writeConfig(qa.dir, 'client.yaml', transport(SHARED_BROKER)));
  const once = ['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', `twice-${prefix}`, '--json'];
  const made = json<{ host: string; vm: Vm & { already: boolean } }>(await cli(once));
  assert.equal(made.vm.already, false);
  // Four repeats: the any-host queue hands them to both hosts in turn, so without the lookup two would
  // reach the other host.
  for (let round = 0; round < 4; round++) {
    const repeated = json<{ host: string; vm: Vm & { already: boolean } }>(await cli(once));
    assert.deepEqual([repeated.host, repeated.vm.id, repeated.vm.already], [made.host, made.vm.id, true], `repeat ${round + 1}`);
  }
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms.map((vm) => vm.id), [made.vm.id], 'one VM');
  assert.equal((await cli(['vm', 'delete', made.vm.id])).code, 0);
  for (let round = 0; round < 2; round++) {
    const remade = await cli(once);
    assert.equal(remade.code, 1, remade.stdout + remade.stderr);
    const refused = json<{ host: string; error: { code: string } }>(remade);
    assert.deepEqual([refused.host, refused.error.code], [made.host, 'REQUEST_ID_REUSED'], `after the delete, repeat ${round + 1}`);
  }
  assert.deepEqual(json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms, [], 'no VM made');

  // One host stopped: a request it may have run is not sent anywhere; with --host it is.
  const other = made.host === 'qa' ? qb : qa;
  const otherId = made.host === 'qa' ? 'qb' : 'qa';
  await other.stopAgent();
  await new Promise((resolve) => setTimeout(resolve, 3_500)); // judged down (downAfterMs): not waited for
  const fresh = ['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', `unsure-${prefix}`];
  const unsure = await cli(fresh);
  assert.equal(unsure.code, 1, unsure.stdout + unsure.stderr);
  assert.match(unsure.stderr, new RegExp(`error \\[REQUEST_UNRESOLVED\\]: request unsure-${prefix} left nothing on the hosts that answered, but ${otherId} \\((down|did not answer)\\) could not say whether it ran there`));
  assert.match(unsure.stderr, /hint: .*give --host/);
  const forced = json<{ host: string; vm: Vm }>(await cli([...fresh, '--host', made.host, '--json']));
  assert.equal(forced.host, made.host);
  assert.equal((await cli(['vm', 'delete', forced.vm.id])).code, 0);
});

test('vm cli — RabbitMQ, two hosts: a create cut off while it waits its turn, sent again without --host, joins it on its host; the idle host makes none', async (t) => {
  // Before (core API 1.10), find-create answered null for a create waiting for create-vm's one thread: the
  // repeat went to any host, and the idle one could make a second VM.
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 3000\n`;
  const routing = () => `  - use: routing-direct\n  - use: routing-fanout\n`;
  const qemu = await gatedQemu(t, { opensAfterS: 240 });
  // qa takes at most two requests from a queue at once, and holds both creates unacknowledged: a repeat sent
  // to any host can only reach qb, as on a busy host. Sent to qa's own queue, it reaches qa.
  const busyTransport = (url: string) => `${transport(url)}  prefetch: 2\n`;
  const qa = await startBrokerQemuHost(t, busyTransport, { hostId: 'qa', pluginsYaml: routing, qemuOptionsYaml: `      qemuBinary: ${qemu.binary}\n` });
  t.after(() => deletePrefix(SHARED_BROKER, prefix, ['qa', 'qb']));
  const clientConfig = await writeConfig(qa.dir, 'client.yaml', transport(SHARED_BROKER));
  const cli = vmCli(clientConfig);
  const createArgs = (request: string) => ['vm', 'create', '--image', 'tiny', '--memory', '128', '--request-id', request, '--json'];
  const loggedBy = (host: QemuHost, msg: string, field: string) => host.agentOutput().split('\n').filter((line) => line.includes(field) && line.includes(`"msg":"${msg}"`)).length;
  const logged = (msg: string, field: string) => loggedBy(qa, msg, field);

  // qa alone: the first create holds its thread (its QEMU waits at the gate), the second waits behind it.
  const first = cli(createArgs(`first-${prefix}`));
  await until(() => logged('accepted', `"msgId":"first-${prefix}"`) > 0, 30_000, 'the first create accepted on qa');
  const second = `second-${prefix}`;
  // Its caller is cut off (killed): the answer is lost; the create still waits on qa.
  const cutOff = spawn(process.execPath, [cliBin, ...createArgs(second), '--config', clientConfig], { stdio: 'ignore' });
  t.after(() => cutOff.kill('SIGKILL'));
  await until(() => logged('accepted', `"msgId":"${second}"`) > 0, 30_000, 'the second create accepted on qa');
  cutOff.kill('SIGKILL');

  // An idle host joins. The repeat, without --host: qa says "accepted", qb nothing, so it goes to qa.
  const qb = await startBrokerQemuHost(t, transport, { hostId: 'qb', pluginsYaml: routing });
  const repeat = cli(createArgs(second));
  // The gate opens only once the repeat has reached a host: joined to the create waiting on qa (the fix), or
  // taken by qb (before it, found nothing anywhere and sent to any host).
  const reached = () => logged('request sent again while it runs: it gets the answer of that run', `"msgId":"${second}"`) + loggedBy(qb, 'accepted', `"msgId":"${second}"`);
  await until(() => reached() > 0, 60_000, 'the repeat to reach qa or qb');
  await qemu.release();

  const [made1, again] = await Promise.all([first, repeat]);
  assert.equal(made1.code, 0, made1.stdout + made1.stderr);
  assert.equal(again.code, 0, again.stdout + again.stderr);
  const answered = json<{ host: string; vm: Vm & { already: boolean } }>(again);
  assert.deepEqual([answered.host, answered.vm.id], ['qa', vmIdForRequest('qa', second)], 'answered by qa, with the VM the waiting create made');
  const vms = json<{ vms: Vm[] }>(await cli(['vm', 'list', '--json'])).vms;
  assert.deepEqual(vms.map((vm) => vm.host).sort(), ['qa', 'qa'], `two VMs, both on qa; none on qb: ${JSON.stringify(vms.map((vm) => vm.id))}`);
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
