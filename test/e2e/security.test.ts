import assert from 'node:assert/strict';
import { symlinkSync } from 'node:fs';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import amqplib from 'amqplib';
import { makeReply, makeRequest, type ReplyEnvelope, type RequestEnvelope } from '../../core/envelope.ts';
import { CloudletError } from '../../core/errors.ts';
import { signEnvelope } from '../../core/security/envelope-auth.ts';
import { generateKey, keyIdOf, loadPrivateKey } from '../../core/security/keys.ts';
import { SigningClientTransport } from '../../core/security/signing-client.ts';
import { amqpNames, HEADERS } from '../../core/transports/amqp/names.ts';
import { publicKeyFrom } from '../../core/security/keys.ts';
import { runCli, startAgent, tempDir, testkitPath, until, writeConfig } from '../helpers.ts';
import { startCloud } from '../support/cloud.ts';
import { untilHeard } from '../support/raw-amqp.ts';
import { createPublicKey } from 'node:crypto';

async function keyFiles(dir: string, name: string) {
  const key = generateKey();
  const file = join(dir, `${name}.key`);
  await writeFile(file, key.privateKeyPem, { mode: 0o600 });
  const privateKey = await loadPrivateKey(file);
  return { ...key, file, signer: { privateKey, keyId: keyIdOf(createPublicKey(privateKey)) } };
}

test('security — on RabbitMQ: only listed keys command a host, per message type; replies are signed by the host', async (t) => {
  const dir = await tempDir(t);
  const ops = await keyFiles(dir, 'ops');
  const reader = await keyFiles(dir, 'reader');
  const host = await keyFiles(dir, 'h1-host');
  const impostor = await keyFiles(dir, 'impostor');
  const securityYaml = () =>
    `security:\n  requireSignatures: true\n  hostKeyFile: ${host.file}\n  clients:\n    - name: ops\n      publicKey: ${ops.publicKey}\n    - name: reader\n      publicKey: ${reader.publicKey}\n      allow: [test.echo, host-info]\n`;
  const cloud = await startCloud(t, [{ id: 'h1' }], { hostYaml: securityYaml });
  const raw = cloud.client();
  const hostKeys = new Map([['h1', publicKeyFrom(host.publicKey, 'test')]]);
  const asOps = new SigningClientTransport(raw, { signer: ops.signer, hostKeys, requireSignedReplies: true });
  const asReader = new SigningClientTransport(raw, { signer: reader.signer, hostKeys, requireSignedReplies: true });
  const deadline = () => Date.now() + 30_000;

  const signed = await asOps.request(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 1 }, deadline: deadline() }));
  assert.equal(signed.ok, true, JSON.stringify(signed.error));
  assert.ok((signed as ReplyEnvelope & { auth?: unknown }).auth, 'the reply carries the host signature');

  // A type whose handler answers its repeats (handlesRepeats) runs each repeat again here too, signed: not
  // the stored reply (stale once the VM a create made is stopped or deleted), not REPLAYED. Other types keep
  // their stored reply.
  const again = makeRequest({ type: 'test.echo-again', target: 'h1', payload: { value: 2 }, deadline: deadline() });
  for (let round = 0; round < 2; round++) {
    const reply = await asOps.request(again);
    assert.equal(reply.ok, true, JSON.stringify(reply.error));
  }
  const once = makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 3 }, deadline: deadline() });
  const first = await asOps.request(once);
  assert.deepEqual((await asOps.request(once)).result, first.result, 'the stored reply, as it was');
  const logLines = (id: string, msg: string) => cloud.agents.get('h1')!.output().split('\n').filter((line) => line.includes(`"msgId":"${id}"`) && line.includes(msg)).length;
  const handled = (id: string) => logLines(id, '"msg":"handled"');
  // A repeat that arrives while the first run's reply still waits for the broker's confirm (the client can
  // have that reply first) is given that fresh answer instead of a run of its own (PROTOCOL.md 11.11): seen
  // under CI load. Either way it is answered by a run, never from the stored outcome.
  const joined = (id: string) => logLines(id, 'request sent again as its run answered');
  const storedAnswer = (id: string) => logLines(id, 'answered from its stored outcome');
  // The log lines may come just after the replies.
  await until(() => handled(again.id) + joined(again.id) >= 2 && handled(once.id) >= 1 && storedAnswer(once.id) >= 1, 5_000, 'the agent to log both repeats');
  assert.deepEqual(
    { againRuns: handled(again.id) + joined(again.id), againStored: storedAnswer(again.id), onceRuns: handled(once.id), onceStored: storedAnswer(once.id) },
    { againRuns: 2, againStored: 0, onceRuns: 1, onceStored: 1 },
    'the repeat of test.echo-again was answered by a run (its own, or the first one just finished); of test.echo from the stored outcome',
  );

  const unsigned = await raw.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: deadline() }));
  assert.equal(unsigned.error?.code, 'UNSIGNED');
  // Refusals are logged with what is known of the sender (the line may reach us just after the reply).
  const logged = /"code":"UNSIGNED".*"sender":\{"transport":"amqp","route":"direct"/;
  const logDeadline = Date.now() + 5_000;
  while (!logged.test(cloud.agents.get('h1')!.output()) && Date.now() < logDeadline) await new Promise((r) => setTimeout(r, 50));
  assert.match(cloud.agents.get('h1')!.output(), logged);

  const allowed = await asReader.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: deadline() }));
  assert.equal(allowed.ok, true);
  const forbidden = await asReader.request(makeRequest({ type: 'test.fail', target: 'h1', payload: {}, deadline: deadline() }));
  assert.equal(forbidden.error?.code, 'FORBIDDEN');

  const stranger = new SigningClientTransport(raw, { signer: impostor.signer, hostKeys, requireSignedReplies: true });
  const unknownKey = await stranger.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: deadline() }));
  assert.equal(unknownKey.error?.code, 'BAD_SIGNATURE');

  const tampered = signEnvelope(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 'a' }, deadline: deadline() }), ops.signer);
  tampered.payload = { value: 'b' };
  assert.equal((await raw.request(tampered)).error?.code, 'BAD_SIGNATURE');

  const tooFar = await asOps.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: Date.now() + 86_400_000 }));
  assert.equal(tooFar.error?.code, 'REPLAYED');
  const noDeadline = await asOps.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {} }));
  assert.equal(noDeadline.error?.code, 'REPLAYED');

  // A client that trusts another key for h1 rejects the real host's reply as an impostor's.
  const wrongTrust = new SigningClientTransport(raw, { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(impostor.publicKey, 'test')]]), requireSignedReplies: true });
  await assert.rejects(wrongTrust.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: deadline() })), (error: CloudletError) => error.code === 'UNTRUSTED_REPLY');
});

test('security — a replayed request id is refused, unless its type answers repeats (handlesRepeats); one past its deadline too', async (t) => {
  const dir = await tempDir(t);
  const ops = await keyFiles(dir, 'ops');
  const { client, logs } = await startAgent(t, { plugins: [{ use: testkitPath }], security: { requireSignatures: true, clients: [{ name: 'ops', publicKey: ops.publicKey }] } });
  const request = signEnvelope(makeRequest({ type: 'test.echo', payload: { value: 1 }, deadline: Date.now() + 30_000 }), ops.signer);
  assert.equal((await client.request(request)).ok, true);
  const replay = await client.request(request);
  assert.equal(replay.error?.code, 'REPLAYED');
  const again = signEnvelope(makeRequest({ type: 'test.echo-again', payload: { value: 1 }, deadline: Date.now() + 30_000 }), ops.signer);
  for (let round = 0; round < 2; round++) assert.equal((await client.request(again)).ok, true, 'its handler answers the repeat');
  assert.equal(logs().filter((line) => line.msgId === again.id && line.msg === 'handled').length, 2);
  const stale = signEnvelope(makeRequest({ type: 'test.echo', payload: {}, deadline: Date.now() - 1_000 }), ops.signer);
  const late = await client.request(stale).catch((error: CloudletError) => error);
  assert.equal(late instanceof CloudletError ? late.code : late.error?.code, 'DEADLINE_EXCEEDED');
});

test('security — secrets: a world-readable config with a broker password and a readable key file are refused', async (t) => {
  const dir = await tempDir(t);
  const config = join(dir, 'open.yaml');
  await writeFile(config, 'transport:\n  kind: amqp\n  url: amqp://cloud:hunter2@127.0.0.1:5672\n');
  await chmod(config, 0o644);
  const check = await runCli(['config', 'check', config]);
  assert.equal(check.code, 3);
  assert.match(check.stderr + check.stdout, /CONFIG_INSECURE[\s\S]*chmod 640/);
  assert.doesNotMatch(check.stderr + check.stdout, /hunter2/);

  const key = generateKey();
  const keyFile = join(dir, 'host.key');
  await writeFile(keyFile, key.privateKeyPem, { mode: 0o644 });
  await chmod(keyFile, 0o644);
  const agentConfig = await writeConfig(dir, 'keyed.yaml', `transport:\n  kind: local\n  socket: ${join(dir, 's.sock')}\nsecurity:\n  hostKeyFile: ${keyFile}\n`);
  const agent = await runCli(['agent', '--config', agentConfig], { env: { CLOUDLET_LOG_FORMAT: 'json' } });
  // The key file is read with the config, so nothing starts: exit 3, like any config problem.
  assert.equal(agent.code, 3, agent.stderr);
  assert.match(agent.stderr, /\[CONFIG_INSECURE\] .*: security\.hostKeyFile: .*chmod 600/);
});

test('security — cloudlet keys generate writes a private key only its owner can read, and keys show reads it back', async (t) => {
  const dir = await tempDir(t);
  const generated = await runCli(['keys', 'generate', '--name', 'ops', '--out', dir, '--json']);
  assert.equal(generated.code, 0, generated.stderr);
  const key = JSON.parse(generated.stdout) as { file: string; keyId: string; publicKey: string };
  assert.equal(key.file, join(dir, 'ops.key'));
  assert.equal((await stat(key.file)).mode & 0o777, 0o600);
  assert.match(key.keyId, /^[0-9a-f]{16}$/);
  const shown = await runCli(['keys', 'show', key.file, '--json']);
  assert.equal(shown.code, 0, shown.stderr);
  assert.deepEqual(JSON.parse(shown.stdout), { file: key.file, keyId: key.keyId, publicKey: key.publicKey });
  // Never overwritten.
  const again = await runCli(['keys', 'generate', '--name', 'ops', '--out', dir]);
  assert.equal(again.code, 2);
  assert.match(again.stderr, /exists/);
});

test('security — a signed request that failed retryably (TIMEOUT) may be sent again with the same id; a finished one may not', async (t) => {
  // The id is no outcome until the request finished: a redelivery or the client publishing again after a
  // reconnect must run it, not be told REPLAYED (which is final).
  const dir = await tempDir(t);
  const ops = await keyFiles(dir, 'ops');
  const { client } = await startAgent(t, {
    plugins: [{ use: testkitPath }],
    pools: { 'test.sleep': { timeoutMs: 200, cancelGraceMs: 200 } },
    security: { requireSignatures: true, clients: [{ name: 'ops', publicKey: ops.publicKey }] },
  });
  const slow = signEnvelope(makeRequest({ type: 'test.sleep', payload: { ms: 5_000 }, deadline: Date.now() + 30_000 }), ops.signer);
  assert.equal((await client.request(slow)).error?.code, 'TIMEOUT');
  assert.equal((await client.request(slow)).error?.code, 'TIMEOUT', 'run again, not refused');
  const quick = signEnvelope(makeRequest({ type: 'test.echo', payload: { value: 1 }, deadline: Date.now() + 30_000 }), ops.signer);
  assert.equal((await client.request(quick)).ok, true);
  assert.equal((await client.request(quick)).error?.code, 'REPLAYED');
});

test('security — a signed reply is measured with its signature: one that only fits unsigned becomes MESSAGE_TOO_LARGE, not a dropped reply', async (t) => {
  const dir = await tempDir(t);
  const host = await keyFiles(dir, 'host');
  const maxMessageBytes = 4_096;
  const { client } = await startAgent(t, { plugins: [{ use: testkitPath }], limits: { maxMessageBytes }, security: { hostKeyFile: host.file } });
  // Grow the echo 20 bytes at a time (the signature adds ~130). Every reply that is sent must fit as sent:
  // measured before signing, the last ones went out over the limit, which a client holding the same limit
  // drops (and then times out).
  const echo = (size: number) => client.request(makeRequest({ type: 'test.echo', payload: { value: 'x'.repeat(size) }, deadline: Date.now() + 5_000 }));
  let probe = 3_500;
  let reply = await echo(probe);
  while (reply.ok && probe < maxMessageBytes) {
    assert.ok(Buffer.byteLength(JSON.stringify(reply)) <= maxMessageBytes, `a signed reply of ${Buffer.byteLength(JSON.stringify(reply))} bytes was sent`);
    reply = await echo((probe += 20));
  }
  assert.equal(reply.error?.code, 'MESSAGE_TOO_LARGE');
  assert.ok((reply.error?.details as { size: number }).size < maxMessageBytes + 200, 'refused for the signature, not for the echo alone');
  assert.ok((reply as ReplyEnvelope & { auth?: unknown }).auth, 'the refusal is signed too');
});

test('security — an any-host request every host refuses comes back NO_CAPACITY and still signed, refusedBy included', async (t) => {
  const dir = await tempDir(t);
  const keys = { full1: await keyFiles(dir, 'full1-host'), full2: await keyFiles(dir, 'full2-host') };
  const cloud = await startCloud(
    t,
    [
      { id: 'full1', testkitOptions: { hasCapacity: false } },
      { id: 'full2', testkitOptions: { hasCapacity: false } },
    ],
    // Nothing here waits for a host to be judged down: each must count the other as live to hand on to it.
    { hostYaml: (host) => `security:\n  hostKeyFile: ${keys[host as keyof typeof keys].file}\n`, downAfterMs: 15_000 },
  );
  const ops = await keyFiles(dir, 'ops');
  const hostKeys = new Map(Object.entries(keys).map(([host, key]) => [host, publicKeyFrom(key.publicKey, 'test')]));
  const client = new SigningClientTransport(cloud.client(), { signer: ops.signer, hostKeys, requireSignedReplies: true });
  // Each counts the other as a live host to hand on to.
  await untilHeard(cloud.url, amqpNames(cloud.prefix), 'full1', 'full2');
  await untilHeard(cloud.url, amqpNames(cloud.prefix), 'full2', 'full1');
  // The last host to refuse adds who refused to the reply after the dispatcher signed it: it must sign again.
  const refused = await client.request(makeRequest({ type: 'test.reserve', payload: {}, deadline: Date.now() + 30_000 }));
  assert.equal(refused.error?.code, 'NO_CAPACITY');
  assert.deepEqual(((refused.error?.details ?? {}) as { refusedBy?: string[] }).refusedBy?.sort(), ['full1', 'full2']);
});

test('security — a reply the transport makes itself (STATE_UNWRITABLE: the outcome file is full) is signed too', async (t) => {
  const dir = await tempDir(t);
  const hostKey = await keyFiles(dir, 'h1-host');
  const cloud = await startCloud(t, [{ id: 'h1' }], { hostYaml: () => `security:\n  hostKeyFile: ${hostKey.file}\n` });
  symlinkSync('/dev/full', join(cloud.dir, 'state', 'h1', 'outcomes', 'h1.jsonl'));
  const ops = await keyFiles(dir, 'ops');
  const client = new SigningClientTransport(cloud.client(), { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(hostKey.publicKey, 'test')]]), requireSignedReplies: true });
  const refused = await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: {}, deadline: Date.now() + 30_000 }));
  // Unsigned, the client would have reported UNTRUSTED_REPLY instead.
  assert.equal(refused.error?.code, 'STATE_UNWRITABLE', JSON.stringify(refused.error));
});

/**
 * Host h1 signs its replies, `client` checks them, and `channel` is someone else's on the same broker: what
 * an attacker with access to the broker can do.
 */
async function signedCloudAndIntruder(t: TestContext) {
  const dir = await tempDir(t);
  const hostKey = await keyFiles(dir, 'h1-host');
  const cloud = await startCloud(t, [{ id: 'h1' }], { hostYaml: () => `security:\n  hostKeyFile: ${hostKey.file}\n` });
  const ops = await keyFiles(dir, 'ops');
  const client = new SigningClientTransport(cloud.client(), { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(hostKey.publicKey, 'test')]]), requireSignedReplies: true });
  const intruder = await amqplib.connect(cloud.url);
  t.after(() => intruder.close());
  const channel = await intruder.createChannel();
  return { dir, cloud, ops, client, channel, names: amqpNames(cloud.prefix) };
}

test('security — a signed reply that names no request ("id": null) is not trusted as the answer to another request (replay)', async (t) => {
  const { client, channel, names } = await signedCloudAndIntruder(t);
  // Someone with access to the broker: sees requests for h1 (a queue of its own on the direct exchange) ...
  const { queue: spy } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(spy, names.directExchange, 'h1');
  // ... and gets h1 to sign a reply to bytes it cannot read: "id": null, bound to no request.
  const { queue: inbox } = await channel.assertQueue('', { exclusive: true });
  const signedNullReply = new Promise<Buffer>((resolve) => void channel.consume(inbox, (msg) => msg && resolve(msg.content), { noAck: true }));
  channel.publish(names.directExchange, 'h1', Buffer.from('not json'), { replyTo: inbox, messageId: 'junk' });
  const captured = await signedNullReply;
  assert.equal((JSON.parse(captured.toString()) as ReplyEnvelope).id, null);
  // The victim's request is seen on its way to h1; the captured reply goes to its reply address first.
  const seen = new Promise<{ replyTo: string; correlationId: string }>((resolve) =>
    void channel.consume(spy, (msg) => msg && msg.properties.type === 'test.sleep' && resolve(msg.properties as { replyTo: string; correlationId: string }), { noAck: true }),
  );
  const answer = client.request(makeRequest({ type: 'test.sleep', target: 'h1', payload: { ms: 1_000 }, deadline: Date.now() + 30_000 }));
  const victim = await seen;
  channel.publish('', victim.replyTo, captured, { correlationId: victim.correlationId, contentType: 'application/json' });
  const outcome = await answer.then(
    (reply) => reply,
    (error: unknown) => error,
  );
  assert.ok(outcome instanceof CloudletError && outcome.code === 'UNTRUSTED_REPLY', `the replayed reply was taken as h1's answer: ${JSON.stringify(outcome)}`);
});

test('security — a forged gather reply that comes first neither hides the host\'s signed answer nor adds hosts to wait for', async (t) => {
  // Before, the client kept the first reply claiming each host: a forger answering every broadcast at once
  // as h1 got h1 listed as missing, and the hosts its reply named as live were waited for to the deadline.
  const { dir, cloud, ops, client, channel, names } = await signedCloudAndIntruder(t);
  // Someone with access to the broker sees every broadcast and answers it first, as h1.
  const { queue: spy } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(spy, names.broadcastExchange, '');
  let forged = 0;
  await channel.consume(
    spy,
    (msg) => {
      if (!msg) return;
      const request = JSON.parse(msg.content.toString('utf8')) as RequestEnvelope;
      const reply = makeReply(request, 'h1', { ok: true, result: { forged: true } });
      const headers = { [HEADERS.liveHosts]: JSON.stringify(['h1', 'ghost1', 'ghost2']) };
      channel.publish('', msg.properties.replyTo as string, Buffer.from(JSON.stringify(reply)), { correlationId: msg.properties.correlationId as string, contentType: 'application/json', headers });
      forged += 1;
    },
    { noAck: true },
  );
  await new Promise((r) => setTimeout(r, 500)); // h1's heartbeat seen
  const started = Date.now();
  // h1 takes 300 ms to answer, so the forged reply is always first.
  const gathered = await client.gather(makeRequest({ type: 'test.sleep', payload: { ms: 300 }, deadline: Date.now() + 15_000 }));
  assert.equal(forged, 1);
  assert.deepEqual(
    gathered.replies.map((reply) => ({ host: reply.host, ok: reply.ok, forged: (reply.result as { forged?: boolean } | undefined)?.forged })),
    [{ host: 'h1', ok: true, forged: undefined }],
  );
  assert.deepEqual(gathered.missing, []);
  assert.equal(gathered.untrusted, undefined);
  assert.ok(Date.now() - started < 10_000, `waited ${Date.now() - started} ms: for the hosts only the forged reply named`);

  // A client with the wrong key for h1 trusts neither reply: h1 is missing, and the result says why.
  const wrongKey = new SigningClientTransport(cloud.client(), { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(ops.publicKey, 'test')]]), requireSignedReplies: true });
  const refused = await wrongKey.gather(makeRequest({ type: 'test.sleep', payload: { ms: 0 }, deadline: Date.now() + 2_000 }));
  assert.deepEqual(refused.replies, []);
  assert.deepEqual(refused.missing, ['h1']);
  assert.deepEqual(refused.untrusted?.map((u) => u.host), ['h1']);
  assert.match(refused.untrusted?.[0]?.reason ?? '', /the reply claiming to be from "h1" is not signed by its key/);

  // The CLI says so, rather than "no answer".
  const clientConfig = await writeConfig(dir, 'wrong-key.yaml', `${await readFile(cloud.clientConfig, 'utf8')}security:\n  hostKeys:\n    h1: ${ops.publicKey}\n`);
  const call = await runCli(['call', 'host-info', '--config', clientConfig, '--timeout', '2000']);
  assert.equal(call.code, 1, call.stderr);
  assert.match(call.stdout, /^h1: answered, but with no reply this client trusts: the reply claiming to be from "h1" is not signed by its key$/m);
  const json = await runCli(['call', 'host-info', '--config', clientConfig, '--timeout', '2000', '--json']);
  assert.deepEqual((JSON.parse(json.stdout) as { untrusted: { host: string }[] }).untrusted.map((u) => u.host), ['h1']);
});

test('security — on the local socket, the transport\'s own refusal of an oversize line is signed, and a checking client takes it', async (t) => {
  // Before, the local transport ignored the sealer: once the refusal named the request (its id read from the
  // line's start), a client checking hostKeys failed it with UNTRUSTED_REPLY instead of MESSAGE_TOO_LARGE.
  const dir = await tempDir(t);
  const host = await keyFiles(dir, 'host');
  const ops = await keyFiles(dir, 'ops');
  const { client } = await startAgent(t, { host: { id: 'h1' }, plugins: [{ use: testkitPath }], limits: { maxMessageBytes: 2_048 }, security: { hostKeyFile: host.file } });
  const checking = new SigningClientTransport(client, { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(host.publicKey, 'test')]]), requireSignedReplies: true });
  const reply = await checking.request(makeRequest({ type: 'test.echo', payload: { value: 'x'.repeat(3_000) }, deadline: Date.now() + 10_000 }));
  assert.equal(reply.error?.code, 'MESSAGE_TOO_LARGE');
  assert.ok((reply as ReplyEnvelope & { auth?: unknown }).auth, 'the refusal is signed');
});

test('security — on the local socket, a gather whose one reply fails the check lists the host as missing, with why', async (t) => {
  const dir = await tempDir(t);
  const host = await keyFiles(dir, 'host');
  const ops = await keyFiles(dir, 'ops');
  const { client } = await startAgent(t, { host: { id: 'h1' }, plugins: [{ use: testkitPath }], security: { hostKeyFile: host.file } });
  const trusting = new SigningClientTransport(client, { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(host.publicKey, 'test')]]), requireSignedReplies: true });
  const good = await trusting.gather(makeRequest({ type: 'test.echo', payload: { value: 1 }, deadline: Date.now() + 10_000 }));
  assert.deepEqual([good.replies.map((r) => r.host), good.missing, good.untrusted], [['h1'], [], undefined]);

  const wrongKey = new SigningClientTransport(client, { signer: ops.signer, hostKeys: new Map([['h1', publicKeyFrom(ops.publicKey, 'test')]]), requireSignedReplies: true });
  const heard: string[] = [];
  const refused = await wrongKey.gather(makeRequest({ type: 'test.echo', payload: { value: 1 }, deadline: Date.now() + 10_000 }), { onReply: (reply) => heard.push(reply.host) });
  assert.deepEqual([refused.replies, refused.missing, heard], [[], ['h1'], []]);
  assert.match(refused.untrusted?.[0]?.reason ?? '', /not signed by its key/);
});
