import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import test from 'node:test';
import { canonicalJson } from '../../core/security/canonical.ts';
import { signatureValid, signEnvelope } from '../../core/security/envelope-auth.ts';
import { generateKey, loadPrivateKey, publicKeyFrom } from '../../core/security/keys.ts';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CloudletError } from '../../core/errors.ts';
import { makeReply, makeRequest } from '../../core/envelope.ts';
import { RequestAuthorizer } from '../../core/security/authorizer.ts';
import { SigningClientTransport } from '../../core/security/signing-client.ts';
import type { ClientTransport } from '../../core/transports/transport.ts';

test('security — canonical JSON sorts keys at every level and drops undefined', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: undefined, x: 'é' }], c: null } }), '{"a":{"c":null,"d":[1,{"x":"é","z":1}]},"b":1}');
  assert.throws(() => canonicalJson({ n: Number.NaN }));
});

test('security — a signature covers every field but auth; any change breaks it', () => {
  const key = generateKey();
  const signer = { privateKey: createPrivateKey(key.privateKeyPem), keyId: key.keyId };
  const publicKey = publicKeyFrom(key.publicKey, 'test');
  const request = signEnvelope(makeRequest({ type: 'delete-vm', target: 'h1', payload: { vm: 'h1.abcdefgh' }, deadline: Date.now() + 1000 }), signer);
  assert.equal(signatureValid(request, publicKey), true);
  for (const change of [{ target: 'h2' }, { type: 'stop-vm' }, { id: 'other' }, { deadline: Date.now() + 999_999 }, { payload: { vm: 'h1.zzzzzzzz' } }]) {
    assert.equal(signatureValid({ ...request, ...change }, publicKey), false, JSON.stringify(change));
  }
  const reply = signEnvelope(makeReply(request, 'h1', { ok: true, result: { deleted: true } }), signer);
  assert.equal(signatureValid(reply, publicKey), true);
  assert.equal(signatureValid({ ...reply, result: { deleted: false } }, publicKey), false);
});

test('security — the authorizer remembers ids only while their deadline runs', () => {
  const key = generateKey();
  const signer = { privateKey: createPrivateKey(key.privateKeyPem), keyId: key.keyId };
  const authorizer = new RequestAuthorizer({ requireSignatures: true, clients: [{ name: 'ops', publicKey: key.publicKey, allow: ['*'] }], maxDeadlineMs: 60_000, hostKeys: {}, requireSignedReplies: false });
  const start = Date.now();
  const request = signEnvelope(makeRequest({ type: 'host-info', payload: {}, deadline: start + 10_000 }), signer);
  assert.equal(authorizer.check(request, start), undefined);
  assert.equal(authorizer.check(request, start)?.code, 'REPLAYED');
  // Ids are pruned every 1,000 checks: after that many, 20 s later, the first id's deadline has passed (it is
  // forgotten, and the dispatcher refuses it as DEADLINE_EXCEEDED) while the later ids' have not.
  const later = start + 20_000;
  const others = Array.from({ length: 1_000 }, () => signEnvelope(makeRequest({ type: 'host-info', payload: {}, deadline: later + 30_000 }), signer));
  for (const other of others) assert.equal(authorizer.check(other, later), undefined);
  for (const other of [others[0]!, others[500]!, others[999]!]) assert.equal(authorizer.check(other, later)?.code, 'REPLAYED', 'an id whose deadline runs is remembered');
  assert.equal(authorizer.check(request, later), undefined, 'an id whose deadline passed is forgotten');
  const open = new RequestAuthorizer({ requireSignatures: false, clients: [], maxDeadlineMs: 60_000, hostKeys: {}, requireSignedReplies: false });
  assert.equal(open.check(makeRequest({ type: 'host-info' })), undefined);
});

test('security — a type whose handler answers repeats (handlesRepeats) may be sent again with a taken id; its signature, key and deadline are still checked', () => {
  // Its handler makes no second effect for a repeat and answers with things as they are now: refusing the
  // repeat as REPLAYED would leave a client whose answer was lost without one (and on RabbitMQ the host
  // answered from its stored reply, stale once the VM was stopped or deleted).
  const key = generateKey();
  const other = generateKey();
  const signer = { privateKey: createPrivateKey(key.privateKeyPem), keyId: key.keyId };
  const authorizer = new RequestAuthorizer(
    { requireSignatures: true, clients: [{ name: 'ops', publicKey: key.publicKey, allow: ['create-vm', 'host-info'] }], maxDeadlineMs: 60_000, hostKeys: {}, requireSignedReplies: false },
    { handlesRepeats: new Set(['create-vm', 'delete-vm']) },
  );
  const now = Date.now();
  const create = signEnvelope(makeRequest({ type: 'create-vm', payload: { image: 'tiny' }, deadline: now + 10_000 }), signer);
  assert.equal(authorizer.check(create, now), undefined);
  assert.equal(authorizer.check(create, now), undefined, 'the repeat reaches the handler');
  assert.equal(authorizer.check({ ...create, deadline: now + 20_000 }, now)?.code, 'BAD_SIGNATURE', 'the repeat is still the signed request');
  assert.equal(authorizer.check(signEnvelope({ ...create, deadline: now + 120_000 }, signer), now)?.code, 'REPLAYED', 'too far ahead still');
  const otherSigner = { privateKey: createPrivateKey(other.privateKeyPem), keyId: other.keyId };
  assert.equal(authorizer.check(signEnvelope(create, otherSigner), now)?.code, 'BAD_SIGNATURE');
  assert.equal(authorizer.check(signEnvelope(makeRequest({ type: 'delete-vm', payload: {}, deadline: now + 10_000 }), signer), now)?.code, 'FORBIDDEN', 'the key\'s allow list still holds');
  // Other types keep replay protection.
  const info = signEnvelope(makeRequest({ type: 'host-info', payload: {}, deadline: now + 10_000 }), signer);
  assert.equal(authorizer.check(info, now), undefined);
  assert.equal(authorizer.check(info, now)?.code, 'REPLAYED');
});

test('security — a checking client\'s gather tells onReply only of replies it trusts; the others are missing, as in its result', async () => {
  const key = generateKey();
  const hostSigner = { privateKey: createPrivateKey(key.privateKeyPem), keyId: key.keyId };
  const request = makeRequest({ type: 'host-info', payload: {}, deadline: Date.now() + 10_000 });
  const trusted = signEnvelope(makeReply(request, 'h1', { ok: true, result: { up: true } }), hostSigner);
  // Anyone on the broker can publish a reply claiming to be h2; h2's key did not sign it.
  const forged = makeReply(request, 'h2', { ok: true, result: { up: true, forged: true } });
  // A stand-in transport: it hands on whatever came back, as the real ones do, and leaves checking to the wrapper.
  const inner: ClientTransport = {
    kind: 'stand-in',
    request: () => Promise.reject(new Error('not used')),
    async gather(_request, options = {}) {
      for (const reply of [trusted, forged]) options.onReply?.(reply);
      return { replies: [trusted, forged], missing: ['h3'] };
    },
    subscribe: () => Promise.reject(new Error('not used')),
    close: async () => undefined,
  };
  const hostKeys = new Map([['h1', publicKeyFrom(key.publicKey, 'test')], ['h2', publicKeyFrom(generateKey().publicKey, 'test')]]);
  const client = new SigningClientTransport(inner, { hostKeys, requireSignedReplies: true });
  const told: string[] = [];
  const result = await client.gather(request, { onReply: (reply) => told.push(reply.host) });
  assert.deepEqual(result.replies.map((reply) => reply.host), ['h1']);
  assert.deepEqual(result.missing, ['h2', 'h3']);
  // Before, onReply was handed straight to the inner transport and heard the forged reply as h2's answer.
  assert.deepEqual(told, ['h1']);
});

test('security — what a key file holds is judged before its mode: a readable file that is no key is not told to chmod 600; a FIFO does not hold the start', async (t) => {
  // Before: "cloudlet keys show /etc/shadow" (mode 640) answered "run: chmod 600 /etc/shadow"; a FIFO
  // given as hostKeyFile (mode 600) was read, and the agent's start waited for a writer.
  const dir = await mkdtemp(join(tmpdir(), 'cloudlet-keys-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const notAKey = join(dir, 'shadow');
  await writeFile(notAKey, 'root:*:19000:0:99999:7:::\n', { mode: 0o640 });
  await assert.rejects(loadPrivateKey(notAKey), (error: CloudletError) => {
    assert.equal(error.code, 'CONFIG_INVALID', error.message);
    assert.match(error.message, /holds no private key/);
    assert.doesNotMatch(error.message, /chmod/);
    return true;
  });
  const fifo = join(dir, 'fifo.key');
  execFileSync('mkfifo', ['-m', '600', fifo]);
  await assert.rejects(loadPrivateKey(fifo), { code: 'CONFIG_INVALID', message: `key file ${fifo} is not a regular file (a FIFO); give the PEM file cloudlet keys generate wrote` });
  // A real key that others can read is still refused for that, with the fix.
  const readable = join(dir, 'readable.key');
  await writeFile(readable, generateKey().privateKeyPem, { mode: 0o640 });
  await assert.rejects(loadPrivateKey(readable), { code: 'CONFIG_INSECURE', message: `key file ${readable} is readable by others (mode 640); run: chmod 600 ${readable}` });
});

test('security — a key file that holds no private key (a public key, junk, nothing) or is a folder is a CONFIG_ error naming it', async (t) => {
  // Before: INTERNAL (exit 70) with OpenSSL's "error:1E08010C:DECODER routines::unsupported", naming no file.
  const dir = await mkdtemp(join(tmpdir(), 'cloudlet-keys-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const { publicKey } = generateKeyPairSync('ed25519');
  const files = {
    'public.pem': publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    'junk.key': randomBytes(300),
    'empty.key': '',
    // A wrong path to something large (a disk image): refused after 64 KiB, not read whole.
    'image.key': Buffer.alloc(2 * 1024 * 1024, 1),
  };
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content, { mode: 0o600 });
  await mkdir(join(dir, 'folder.key'), { mode: 0o700 });
  for (const name of [...Object.keys(files), 'folder.key']) {
    const file = join(dir, name);
    await assert.rejects(loadPrivateKey(file), (error: unknown) => {
      assert.ok(error instanceof CloudletError, `${name}: ${String(error)}`);
      assert.match(error.code, /^CONFIG_(INVALID|NOT_FOUND)$/, `${name}: ${error.code} ${error.message}`);
      assert.ok(error.message.includes(file), error.message);
      if (name === 'image.key') assert.match(error.message, /is larger than 64 KiB; an Ed25519 key file/);
      return true;
    });
  }
});
