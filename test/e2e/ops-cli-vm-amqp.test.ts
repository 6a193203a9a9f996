/**
 * `cloudlet vm …` end to end on RabbitMQ: the CLI outside, real qemu-backend agents inside network namespaces
 * (TCG), reaching the broker through a relay. The local transport's half is ops-cli-vm.test.ts; split so that
 * each file stays well within the runner's per-file limit.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { cliBin, spawnAgent, tempDir, testkitPath, until, writeConfig } from '../helpers.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';
import { gatedQemu, type QemuHost } from '../support/qemu-host.ts';
import { json, startBrokerQemuHost, vmCli, type Vm } from '../support/vm-cli.ts';
import { vmIdForRequest } from '../../plugins/qemu-backend/vm-id.ts';
import { generateKey } from '../../core/security/keys.ts';

const sweepStub = fileURLToPath(new URL('../fixtures/plugins/sweep-stub/index.ts', import.meta.url));

test('vm cli — RabbitMQ: create goes to a host with capacity, VM commands to the host in the id, lists gather every host', async (t) => {
  // Nothing here waits for a host to be judged down: a long downAfterMs, so that heartbeats late on a loaded
  // machine (a TCG guest boots meanwhile) do not drop a host from the gathers.
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 15000\n`;
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
  // Nothing here waits for a host to be judged down: a long downAfterMs (see the test above).
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 15000\n`;
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
  // downAfterMs 8 s: long enough that late heartbeats under load do not drop a host while it creates, and
  // the stopped host is waited out below.
  const prefix = `opsvm-${Math.random().toString(36).slice(2, 8)}`;
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 8000\n`;
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
  await new Promise((resolve) => setTimeout(resolve, 8_500)); // judged down (downAfterMs): not waited for
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
  // Nothing here waits for a host to be judged down: a long downAfterMs, so that heartbeats late on a loaded
  // machine (seen in CI: qa "stopped sending heartbeats while handling create-vm" with 3 s) fail nothing.
  const transport = (url: string) => `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 15000\n`;
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
