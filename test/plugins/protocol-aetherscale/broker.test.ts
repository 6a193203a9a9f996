/**
 * protocol-aetherscale on the real broker with two in-process agents and the Python client, without QEMU:
 * VMs are records on disk (qemu-backend lists them as stopped). The real-QEMU scenario is
 * test/e2e/aetherscale.test.ts.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type TestContext } from 'node:test';
import amqplib from 'amqplib';
import { startAgent, tempDir, type InProcessAgent } from '../../helpers.ts';
import { HAND_ON_PATIENCE_MS } from '../../../plugins/protocol-aetherscale/hand-on.ts';
import { deleteQueue, expectNoUnacked, isError, queueState, reasonOf, responseOf, uniqueBroker, type Broker } from './support.ts';

const pluginPath = fileURLToPath(new URL('../../../plugins/protocol-aetherscale/index.ts', import.meta.url));

interface Host {
  id: string;
  agent: InProcessAgent;
  stateDir: string;
}

async function startHost(t: TestContext, broker: Broker, id: string, options: { maxVms?: number; url?: string | null; qemuBinary?: string } = {}): Promise<Host> {
  const dir = await tempDir(t, 'cloudlet-aeth-');
  const images = join(dir, 'images');
  await mkdir(join(images, 'tiny'), { recursive: true });
  await writeFile(join(images, 'tiny', 'vmlinuz'), 'not a kernel');
  await writeFile(join(images, 'tiny', 'initrd.img'), 'not an initrd');
  const stateDir = join(dir, 'qemu');
  const agent = await startAgent(t, {
    host: { id },
    plugins: [
      { use: 'qemu-backend', options: { imagesDir: images, stateDir, accel: 'tcg', network: { mode: 'none' }, limits: { maxVms: options.maxVms ?? 4 }, ...(options.qemuBinary ? { qemuBinary: options.qemuBinary } : {}) } },
      {
        use: pluginPath,
        options: {
          ...(options.url === null ? {} : { url: options.url ?? broker.url }),
          exchange: broker.exchange,
          competingQueue: broker.competingQueue,
          memory: 64,
        },
      },
    ],
  });
  broker.track(() => agent.agent.stop('test finished'));
  return { id, agent, stateDir };
}

/** A VM as qemu-backend records it; without a QEMU process it lists as stopped. */
async function fakeVm(host: Host, letters: string): Promise<string> {
  const id = `${host.id}.${letters}`;
  await mkdir(join(host.stateDir, id), { recursive: true });
  const now = new Date().toISOString();
  const record = { v: 1, id, host: host.id, image: 'tiny', imageKind: 'kernel', memoryMiB: 64, vcpus: 1, mac: '02:00:00:00:00:01', network: { mode: 'none' }, autostart: false, desired: 'stopped', createdAt: now, updatedAt: now };
  await writeFile(join(host.stateDir, id, 'vm.json'), JSON.stringify(record));
  return id;
}

const ackedLines = (host: Host) => host.agent.logs().filter((line) => typeof line.msg === 'string' && line.msg.startsWith('aetherscale request '));

test('aetherscale broker — list-vms: every host answers with its own VMs, by their 8 letters', async (t) => {
  const broker = uniqueBroker(t);
  const [a, b] = await Promise.all([startHost(t, broker, 'ha'), startHost(t, broker, 'hb')]);
  await fakeVm(a, 'aaaaaaaa');
  await fakeVm(b, 'bbbbbbbb');
  const run = await broker.client(['--timeout', '5', '--expect', '2', '--grace', '0.5', 'list-vms']);
  assert.equal(run.code, 0, run.stderr);
  const lists = run.replies.map((reply) => responseOf<{ 'vm-id': string; 'ip-addresses': string[]; hint?: string }[]>(reply));
  assert.deepEqual(
    lists.flat().sort((x, y) => x['vm-id'].localeCompare(y['vm-id'])),
    [
      { 'vm-id': 'aaaaaaaa', 'ip-addresses': [], hint: 'VM "aaaaaaaa" is not running' },
      { 'vm-id': 'bbbbbbbb', 'ip-addresses': [], hint: 'VM "bbbbbbbb" is not running' },
    ],
  );
  assert.equal(lists.length, 2, 'one reply per host');
});

test('aetherscale broker — stop, kill and delete: only the owner answers; an id nobody owns gets no reply', async (t) => {
  const broker = uniqueBroker(t);
  const [a, b] = await Promise.all([startHost(t, broker, 'ha'), startHost(t, broker, 'hb')]);
  await fakeVm(b, 'qwertyui');
  const once = ['--timeout', '6', '--expect', '1', '--grace', '1'];
  const stopped = await broker.client([...once, 'stop-vm', 'qwertyui']);
  assert.deepEqual(stopped.replies.map((r) => responseOf(r)), [{ status: 'stopped', 'vm-id': 'qwertyui', hint: 'VM "qwertyui" was not running' }]);
  const killed = await broker.client([...once, 'stop-vm', 'qwertyui', '--kill']);
  assert.deepEqual(killed.replies.map((r) => responseOf(r)), [{ status: 'killed', 'vm-id': 'qwertyui', hint: 'VM "qwertyui" was not running' }]);
  // The full cloudlet id works too (an extension), and only its host answers.
  const full = await broker.client([...once, 'stop-vm', 'hb.qwertyui']);
  assert.deepEqual(full.replies.map((r) => responseOf<{ 'vm-id': string }>(r)['vm-id']), ['hb.qwertyui']);
  const deleted = await broker.client([...once, 'delete-vm', 'qwertyui']);
  assert.deepEqual(deleted.replies.map((r) => responseOf(r)), [{ status: 'deleted', 'vm-id': 'qwertyui' }]);
  const gone = await broker.client(['--timeout', '2', 'delete-vm', 'qwertyui']);
  assert.deepEqual(gone.replies, [], 'no host owns it any more: silence, not two "VM does not exist"');
  const silentA = a.agent.logs().filter((l) => l.outcome === 'silent').length;
  assert.equal(silentA, 5, 'host ha stayed silent for each of the five requests');
  const unacked = await expectNoUnacked(broker.exchange);
  if (unacked) assert.deepEqual([...unacked.values()], [0, 0, 0], 'the competing queue and one queue per host, nothing unacked');
});

test('aetherscale broker — bad requests get error replies and are acked', async (t) => {
  const broker = uniqueBroker(t);
  const [a, b] = await Promise.all([startHost(t, broker, 'ha'), startHost(t, broker, 'hb')]);
  const window = (expected: number) => ['--timeout', '5', '--expect', String(expected), '--grace', '0.7'];
  const cases: { args: string[]; replies: number; reason: RegExp }[] = [
    { args: [...window(1), 'raw', 'this is not json', '--routing-key', 'create-vm'], replies: 1, reason: /^Message is not valid JSON/ },
    { args: [...window(1), 'raw', '{"options": {}}', '--routing-key', 'create-vm'], replies: 1, reason: /^No "command" specified in message$/ },
    { args: [...window(1), 'raw', '[1, 2]', '--routing-key', 'create-vm'], replies: 1, reason: /must be a JSON object/ },
    // Broadcast commands reach every host, and each says what is wrong.
    { args: [...window(2), 'raw', '{"command": "reboot-vm"}', '--routing-key', 'list-vms'], replies: 2, reason: /^Invalid command "reboot-vm" specified/ },
    { args: [...window(2), 'raw', '{"command": "stop-vm", "options": {}}'], replies: 2, reason: /^VM ID not specified$/ },
    { args: [...window(2), 'raw', '{"command": "start-vm", "options": {"vm-id": "Not An Id"}}'], replies: 2, reason: /^Invalid VM ID "Not An Id"/ },
    { args: [...window(2), 'raw', '{"command": "delete-vm", "options": "abc"}'], replies: 2, reason: /"options" must be a JSON object/ },
    // A create sent to every host would create a VM on each: refused.
    { args: [...window(2), 'raw', '{"command": "create-vm", "options": {"image": "tiny"}}', '--routing-key', 'list-vms'], replies: 2, reason: /must be published with routing key "create-vm"/ },
    { args: [...window(1), 'raw', '{"command": "create-vm", "options": {}}'], replies: 1, reason: /^Image not specified$/ },
    { args: [...window(1), 'create-vm', '/var/lib/images/nosuch.qcow2'], replies: 1, reason: /^Image "nosuch" does not exist; available images: tiny$/ },
    { args: [...window(1), 'create-vm', '..'], replies: 1, reason: /not a valid image name/ },
  ];
  for (const { args, replies, reason } of cases) {
    const run = await broker.client(args);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.replies.length, replies, `${args.join(' ')} → ${JSON.stringify(run.replies)}`);
    for (const reply of run.replies) {
      assert.ok(isError(reply), JSON.stringify(reply));
      assert.match(reasonOf(reply), reason);
    }
  }
  // Without reply_to nobody hears the error, but the request is acked all the same.
  assert.equal((await broker.client(['--no-reply', 'raw', '{"command": "list-vms", "options": 3}'])).code, 0);
  const unacked = await expectNoUnacked(broker.exchange);
  if (unacked) {
    assert.equal(unacked.size, 3, 'the competing queue and one queue per host');
    assert.deepEqual([...unacked.values()], [0, 0, 0]);
  } else t.diagnostic('rabbitmqctl is not usable here: unacked counts checked from the agent logs only');
  // Every delivery was settled: 3 + 2×5 + 1 + 2 (the unknown image went to both hosts) + 1 + 2 (no reply_to).
  await waitFor(() => ackedLines(a).length + ackedLines(b).length === 19, () => `settled: ${ackedLines(a).length} + ${ackedLines(b).length}`);
  const settled = [...ackedLines(a), ...ackedLines(b)].map((line) => line.settled);
  assert.deepEqual(settled.filter((s) => s !== 'acked'), ['handed on'], 'acked, but for the unknown image handed to the other host first');
  const competing = await queueState(broker.url, broker.competingQueue);
  assert.deepEqual(competing, { messageCount: 0, consumerCount: 2 });
});

test('aetherscale broker — replies echo the correlation_id and are JSON', async (t) => {
  const broker = uniqueBroker(t);
  await startHost(t, broker, 'ha');
  const run = await broker.client(['--timeout', '5', '--expect', '1', '--properties', '--correlation-id', 'corr-42', 'list-vms']);
  assert.equal(run.replies.length, 1, run.stderr);
  assert.equal(run.replies[0]?.correlation_id, 'corr-42');
  assert.equal(run.replies[0]?.content_type, 'application/json');
  assert.deepEqual(run.replies[0]?.body, { 'execution-info': { status: 'success' }, response: [] });
});

test('aetherscale broker — a create no host has room for is passed around, then answered once', async (t) => {
  const broker = uniqueBroker(t);
  const [a, b] = await Promise.all([startHost(t, broker, 'ha', { maxVms: 0 }), startHost(t, broker, 'hb', { maxVms: 0 })]);
  const run = await broker.client(['--timeout', '8', '--expect', '1', '--grace', '1', 'create-vm', 'tiny']);
  assert.equal(run.replies.length, 1, JSON.stringify(run.replies));
  assert.match(reasonOf(run.replies[0]), /^No host has capacity for the VM \(refused by h[ab], h[ab]\): host h[ab] is full/);
  const handedOn = [...a.agent.logs(), ...b.agent.logs()].filter((l) => l.settled === 'handed on');
  assert.ok(handedOn.length >= 1, 'at least one host passed it on');
  assert.deepEqual(await queueState(broker.url, broker.competingQueue), { messageCount: 0, consumerCount: 2 });
});

test('aetherscale broker — consumers come back after the competing queue is deleted under them', async (t) => {
  const broker = uniqueBroker(t);
  const host = await startHost(t, broker, 'ha');
  await deleteQueue(broker.url, broker.competingQueue);
  await waitFor(async () => (await queueState(broker.url, broker.competingQueue).catch(() => ({ consumerCount: 0 }))).consumerCount === 1, () => 'no consumer again', 15_000);
  const run = await broker.client(['--timeout', '5', '--expect', '1', 'create-vm', 'nosuch']);
  assert.match(reasonOf(run.replies[0]), /^Image "nosuch" does not exist/);
  assert.ok(host.agent.logs().some((l) => l.msg === 'aetherscale: reconnecting to set up the consumers again'));
});

test('aetherscale broker — an exchange and queue declared with other settings (e.g. by the original servers) are used as they are', async (t) => {
  const broker = uniqueBroker(t);
  const connection = await amqplib.connect(broker.url);
  try {
    const channel = await connection.createChannel();
    await channel.assertExchange(broker.exchange, 'direct', { durable: true });
    await channel.assertQueue(broker.competingQueue, { durable: true, arguments: { 'x-max-length': 100 } });
  } finally {
    await connection.close();
  }
  const host = await startHost(t, broker, 'ha');
  assert.ok(host.agent.logs().some((l) => l.msg === 'aetherscale: the queue exists with other settings; using it as it is'));
  assert.ok(host.agent.logs().some((l) => l.msg === 'aetherscale: the exchange exists with other settings; using it as it is'));
  const run = await broker.client(['--timeout', '5', '--expect', '1', 'create-vm', 'nosuch']);
  assert.match(reasonOf(run.replies[0]), /^Image "nosuch" does not exist; available images: tiny$/);
});

test('aetherscale broker — the URL may come from CLOUDLET_AMQP_URL; without any the host does not start', async (t) => {
  const broker = uniqueBroker(t);
  const saved = process.env.CLOUDLET_AMQP_URL;
  t.after(() => {
    if (saved === undefined) delete process.env.CLOUDLET_AMQP_URL;
    else process.env.CLOUDLET_AMQP_URL = saved;
  });
  delete process.env.CLOUDLET_AMQP_URL;
  await assert.rejects(startHost(t, broker, 'ha', { url: null }), /no broker URL: set the plugin option "url" or the environment variable CLOUDLET_AMQP_URL/);
  process.env.CLOUDLET_AMQP_URL = broker.url;
  const host = await startHost(t, broker, 'hb', { url: null });
  const run = await broker.client(['--timeout', '5', '--expect', '1', 'list-vms']);
  assert.deepEqual(responseOf(run.replies[0]), []);
  const logged = JSON.stringify(host.agent.logs());
  assert.ok(logged.includes('guest:***@'), 'the broker is named, its password masked');
  assert.ok(!logged.includes('guest:guest@'), 'the password is never logged');
});

async function waitFor(check: () => boolean | Promise<boolean>, describe: () => string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${describe()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Publishes `count` raw create-vm requests and collects the replies for `waitMs`. */
async function rawCreates(t: TestContext, broker: Broker, count: number, image: string, headers?: Record<string, unknown>, waitMs = 6_000): Promise<string[]> {
  const connection = await amqplib.connect(broker.url);
  t.after(() => connection.close().catch(() => undefined));
  const channel = await connection.createConfirmChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  const replies: string[] = [];
  await channel.consume(queue, (msg) => msg && replies.push(msg.content.toString()), { noAck: true });
  const body = Buffer.from(JSON.stringify({ command: 'create-vm', options: { image } }));
  // Confirmed, and sent again while the broker refuses it: a queue limited to one message (as below) drops a
  // create sent while it is full, and that create would never be answered.
  const publish = async (): Promise<void> => {
    for (;;) {
      const sent = await new Promise<boolean>((resolve) => channel.publish(broker.exchange, 'create-vm', body, { replyTo: queue, ...(headers ? { headers } : {}) }, (error) => resolve(!error)));
      if (sent) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  for (let i = 0; i < count; i++) await publish();
  await waitFor(async () => replies.length >= count, () => `${replies.length} of ${count} creates answered`, waitMs);
  return replies;
}

const PATIENT_MS = HAND_ON_PATIENCE_MS + 10_000;

test('aetherscale broker — a create that cannot be handed on is answered with the refusal and acked; the hosts go on taking creates', { timeout: 4 * (HAND_ON_PATIENCE_MS + 10_000) }, async (t) => {
  // Before, a failed hand-on (the shared queue refusing the copy, or a client header that cannot be written
  // again) skipped the ack on a live channel: the request held the host's one prefetch slot for good, and
  // that host took no create-vm again until it reconnected.
  const broker = uniqueBroker(t);
  const connection = await amqplib.connect(broker.url);
  const setup = await connection.createChannel();
  await setup.assertQueue(broker.competingQueue, { durable: true, arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish' } });
  await connection.close();
  await Promise.all([startHost(t, broker, 'ha', { maxVms: 0 }), startHost(t, broker, 'hb', { maxVms: 0 })]);
  // Both hosts are full, and the one-message queue lets each mostly see its own copies: answers may take
  // until HAND_ON_PATIENCE_MS; this test is about every create being answered and acked, not how fast.
  const refused = await rawCreates(t, broker, 3, 'tiny', undefined, PATIENT_MS);
  for (const reply of refused) assert.match(JSON.parse(reply)['execution-info'].reason, /full/);
  // A header amqplib reads but cannot write back (a timestamp past 2^53) no longer rides along on the copy.
  const poisoned = await rawCreates(t, broker, 2, 'tiny', { x: { '!': 'timestamp', value: 18446744073709551615n } }, PATIENT_MS);
  for (const reply of poisoned) assert.match(JSON.parse(reply)['execution-info'].reason, /full/);
  const after = await rawCreates(t, broker, 1, 'tiny', undefined, PATIENT_MS);
  assert.match(JSON.parse(after[0] as string)['execution-info'].reason, /full/);
  const unacked = await expectNoUnacked(broker.exchange);
  if (unacked) assert.ok([...unacked.values()].every((n) => n === 0), `unacked: ${JSON.stringify([...unacked])}`);
});

test('aetherscale broker — creates refused by a full host wait for the busy host with room, not "no host has capacity"', { timeout: 90_000 }, async (t) => {
  // Before, a request went round at most 3 × consumers + 2 times. The broker sends a busy host nothing while
  // its one prefetch slot is taken, so the copies ha passed on came back to ha, and 2 of 4 creates sent at
  // once were answered "No host has capacity (refused by ha)" although hb had room and never saw them.
  const broker = uniqueBroker(t);
  const dir = await tempDir(t, 'cloudlet-aeth-slow-');
  const slowQemu = join(dir, 'slow-qemu.sh');
  // Busy for 2 s, then fails: hb takes each create in turn, and no real VM starts.
  await writeFile(slowQemu, '#!/bin/sh\nsleep 2\necho "stand-in QEMU: not starting" >&2\nexit 1\n');
  await chmod(slowQemu, 0o755);
  await startHost(t, broker, 'ha', { maxVms: 0 });
  await startHost(t, broker, 'hb', { maxVms: 4, qemuBinary: slowQemu });
  const connection = await amqplib.connect(broker.url);
  t.after(() => connection.close().catch(() => undefined));
  const channel = await connection.createChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  const finals = new Map<string, string>();
  await channel.consume(
    queue,
    (msg) => {
      if (!msg) return;
      const reply = JSON.parse(msg.content.toString()) as { 'execution-info': { status: string; reason?: string } };
      if (reply['execution-info'].status === 'error') finals.set(msg.properties.correlationId as string, reply['execution-info'].reason ?? '');
    },
    { noAck: true },
  );
  const body = Buffer.from(JSON.stringify({ command: 'create-vm', options: { image: 'tiny' } }));
  for (let i = 1; i <= 4; i++) channel.publish(broker.exchange, 'create-vm', body, { replyTo: queue, correlationId: `c${i}` });
  await waitFor(async () => finals.size === 4, () => `${finals.size} of 4 creates answered: ${JSON.stringify([...finals])}`, 60_000);
  for (const [id, reason] of finals) assert.match(reason, /stand-in QEMU: not starting/, `${id} was answered without reaching hb: ${reason}`);
});
