/**
 * `vm create` and a request that may have run before: the hint after a failure that leaves the outcome
 * unknown, the check of a repeat's answer against what was asked, and a repeat's VM stopped since.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { ErrorReply } from '../../../core/cli/client.ts';
import { checkSameSettings, requestIdFor, shellWord, stoppedSince, withRepeatHint } from '../../../core/cli/commands/vm-create-repeat.ts';
import type { VmView } from '../../../core/cli/commands/vm-format.ts';
import { makeReply } from '../../../core/envelope.ts';
import { CloudletError, cloudletError } from '../../../core/errors.ts';

const hintOf = (error: unknown) => ((error as CloudletError).details as { hint?: string }).hint;

test('vm create hint — a lost connection, a client timeout or a down host name the request id, and the host when it is known', () => {
  const local = withRepeatHint(cloudletError('CONNECTION_LOST', 'the connection closed'), 'req-1', undefined, false) as CloudletError;
  assert.equal(local.code, 'CONNECTION_LOST');
  assert.equal(local.message, 'the connection closed');
  assert.equal(local.retryable, true);
  assert.deepEqual(local.details, {
    request: 'req-1',
    hint: 'the create may have run: run the same "cloudlet vm create" again with --request-id=req-1; it answers with the VM that request made (once the host is up and the create done) instead of making a second one',
  });

  const took = withRepeatHint(cloudletError('HOST_DOWN', 'host "h2" stopped sending heartbeats', { host: 'h2' }), 'req-2', 'h2', true) as CloudletError;
  assert.deepEqual({ ...(took.details as object), hint: undefined }, { host: 'h2', request: 'req-2', hint: undefined }, 'the error\'s own details stay');
  assert.match(hintOf(took) ?? '', /^the create may have run on h2: run the same "cloudlet vm create" again with --request-id=req-2 --host h2; it answers/);

  const anyHost = withRepeatHint(cloudletError('CLIENT_TIMEOUT', 'no reply'), 'req-3', undefined, true);
  assert.match(hintOf(anyHost) ?? '', /--request-id=req-3 \(every host is asked where it ran\); it answers/);
});

test('vm create hint — the id is a word a shell takes as it is, option-looking or not', () => {
  assert.equal(shellWord('deploy-7.a_b:c/d@e%f+g,h'), 'deploy-7.a_b:c/d@e%f+g,h');
  assert.equal(shellWord('a;touch${IFS}/tmp/x'), "'a;touch${IFS}/tmp/x'");
  assert.equal(shellWord("it's"), "'it'\\''s'");
  const hint = hintOf(withRepeatHint(cloudletError('CONNECTION_LOST', 'closed'), '--host', undefined, false));
  assert.match(hint ?? '', / --request-id=--host; /, 'after "=" it stays the value');
});

test('vm create hint — other failures are passed on as they are, and so is a host known down before anything was sent', () => {
  const refusedBeforeSending = cloudletError('HOST_DOWN', 'host "h2" has not sent a heartbeat for 6000 ms', { target: 'h2' });
  assert.equal(withRepeatHint(refusedBeforeSending, 'req-1', 'h2', true), refusedBeforeSending);
  const refused = cloudletError('BROKER_UNAVAILABLE', 'no broker');
  assert.equal(withRepeatHint(refused, 'req-1', undefined, true), refused);
  const plain = new Error('not a CloudletError');
  assert.equal(withRepeatHint(plain, 'req-1', undefined, true), plain);
});

test('vm create --request-id — a bad id is a usage error; none draws a random one', () => {
  assert.equal(requestIdFor('deploy-7'), 'deploy-7');
  assert.match(requestIdFor(undefined), /^[0-9a-f-]{36}$/);
  assert.notEqual(requestIdFor(undefined), requestIdFor(undefined));
  for (const bad of ['two words', '', 'x'.repeat(129), 'tab\there', 'é']) {
    assert.throws(() => requestIdFor(bad), (error: CloudletError) => error.code === 'USAGE' && error.message.startsWith('--request-id must be 1–128 printable ASCII characters without spaces, found '), bad);
  }
});

const vm: VmView = { id: 'h1.abcdefgh', host: 'h1', name: 'web', image: 'tiny', memoryMiB: 128, vcpus: 1, mac: '02:00:00:00:00:01', network: 'user', tap: null, autostart: false, state: 'running', desired: 'running', pid: 7, createdAt: '2026-11-27T10:00:00.000Z' };
const reply = makeReply({ id: 'req-1', type: 'create-vm' }, 'h1', { ok: true, result: vm });

test('vm create --request-id — an answer whose VM was made with other settings is REQUEST_ID_REUSED (a stored RabbitMQ reply is not compared by the host)', () => {
  checkSameSettings(reply, vm, { image: 'tiny', memory: 128, vcpus: 1, name: 'web' }, 'req-1');
  checkSameSettings(reply, vm, { image: 'tiny', memory: 128, vcpus: 1, name: 'web', network: 'user', autostart: false }, 'req-1');
  assert.throws(
    () => checkSameSettings(reply, vm, { image: 'tiny', memory: 256, vcpus: 1, network: 'bridge' }, 'req-1'),
    (error: ErrorReply) => {
      assert.ok(error instanceof ErrorReply);
      assert.equal(error.host, 'h1');
      assert.equal(error.error.code, 'REQUEST_ID_REUSED');
      assert.equal(error.error.retryable, false);
      assert.equal(error.error.message, 'request req-1 made VM h1.abcdefgh already, with other settings: memory 256 (made with 128), name (none) (made with "web"), network "bridge" (made with "user"); give a new request a new id');
      assert.deepEqual(error.error.details, { vm: 'h1.abcdefgh', request: 'req-1', fields: ['memory', 'name', 'network'] });
      return true;
    },
  );
});

test('vm create --request-id — a repeat whose VM is not running now fails its wait at once, saying how to start it', () => {
  assert.equal(stoppedSince(vm), undefined);
  assert.equal(stoppedSince({ ...vm, already: true }), undefined, 'running: the wait goes on');
  assert.equal(stoppedSince({ ...vm, state: 'stopped', desired: 'stopped' }), undefined, 'not a repeat: the usual wait');
  const failed = stoppedSince({ ...vm, already: true, state: 'stopped', desired: 'stopped', pid: null });
  assert.equal(failed?.for, 'state');
  assert.equal(failed?.host, undefined, 'the CLI says so, not the host');
  assert.equal(failed?.error.code, 'VM_STOPPED');
  assert.deepEqual(failed?.error.details, { vm: 'h1.abcdefgh', state: 'stopped', hint: 'start it: "cloudlet vm start h1.abcdefgh --wait"' });
  assert.equal(failed?.error.message, 'h1.abcdefgh was made by this request before and has been stopped since; nothing waits for it to run');
  // Its QEMU ended on its own: nothing restarts it either (autostart acts only when the agent starts).
  const ended = stoppedSince({ ...vm, already: true, state: 'stopped', desired: 'running', pid: null });
  assert.equal(ended?.error.message, 'h1.abcdefgh was made by this request before and is stopped now, though nobody stopped it; nothing waits for it to run');
});
