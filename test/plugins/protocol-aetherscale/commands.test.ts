/**
 * The translation aetherscale ⇄ cloudlet with a stand-in dispatch, in addition to the real-broker tests
 * (broker.test.ts) and the real-QEMU scenario (test/e2e/aetherscale.test.ts).
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import type { DispatchReply } from '../../../core/plugin-api.ts';
import { maskCredentials } from '../../../plugins/protocol-aetherscale/broker.ts';
import { runCommand, type CommandContext, type Dispatch } from '../../../plugins/protocol-aetherscale/commands.ts';
import { imageBaseName } from '../../../plugins/protocol-aetherscale/create-vm.ts';
import { checkHostConfig } from '../../../core/config/host-config.ts';
import { rawConfigFrom } from '../../../core/config/load.ts';
import { HAND_ON_PATIENCE_MS, handOnDecision } from '../../../plugins/protocol-aetherscale/hand-on.ts';
import { brokerUrl } from '../../../plugins/protocol-aetherscale/index.ts';
import { aetherscaleOptionsSchema } from '../../../plugins/protocol-aetherscale/options.ts';
import { findOwnVm, parseVmRef } from '../../../plugins/protocol-aetherscale/vm-ids.ts';
import { parseRequest, pythonTruthy, type AetherscaleReply } from '../../../plugins/protocol-aetherscale/wire.ts';

const log = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const encode = (value: unknown) => new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value));
const okReply = (result: unknown): DispatchReply => ({ ok: true, host: 'h1', result });
const errReply = (code: string, message: string, details?: unknown): DispatchReply => ({ ok: false, host: 'h1', error: { code, message, details } });

interface Call {
  type: string;
  payload: unknown;
}

/** A context whose dispatch answers from `script` (by message type) and records what it was sent. */
function fakeContext(
  script: Record<string, (payload: unknown, onProgress?: (stage: string, detail?: Record<string, unknown>) => void) => Promise<DispatchReply> | DispatchReply>,
  options: Record<string, unknown> = {},
) {
  const calls: Call[] = [];
  const replies: AetherscaleReply[] = [];
  const dispatch: Dispatch = async (type, payload, dispatchOptions) => {
    calls.push({ type, payload });
    const answer = script[type];
    if (!answer) throw new Error(`unexpected dispatch of ${type}`);
    return answer(payload, dispatchOptions?.onProgress);
  };
  const ctx: CommandContext = {
    host: 'h1',
    options: aetherscaleOptionsSchema.parse({ url: 'amqp://x', ...options }),
    dispatch,
    log,
    reply: async (body) => {
      replies.push(body);
    },
  };
  return { ctx, calls, replies };
}

const listing = (...vms: { id: string; state?: string; addresses?: { address: string; scope: string }[] }[]) => () =>
  okReply({ host: 'h1', vms: vms.map((vm) => ({ state: 'running', addresses: [], ...vm })) });

test('aetherscale wire — requests are parsed like the original did, and misrouted commands are refused', () => {
  assert.deepEqual(parseRequest(encode({ command: 'list-vms' }), 'per-host'), { ok: true, command: 'list-vms', options: {} });
  assert.deepEqual(parseRequest(encode({ command: 'stop-vm', options: null }), 'per-host'), { ok: true, command: 'stop-vm', options: {} });
  const refused: [Uint8Array, 'per-host' | 'competing', RegExp][] = [
    [new Uint8Array([0xff, 0xfe]), 'per-host', /not valid JSON/],
    [encode('{"command": '), 'per-host', /not valid JSON/],
    [encode('"list-vms"'), 'per-host', /must be a JSON object/],
    [encode({ command: null }), 'per-host', /^No "command" specified in message$/],
    [encode({ command: 7 }), 'per-host', /^Invalid command 7 specified/],
    [encode({ command: 'vm-info' }), 'per-host', /^Invalid command "vm-info" specified \(known: create-vm, list-vms/],
    [encode({ command: 'create-vm', options: { image: 'x' } }), 'per-host', /must be published with routing key "create-vm"/],
    [encode({ command: 'list-vms' }), 'competing', /must be published with routing key "list-vms"/],
    [encode({ command: 'list-vms', options: [] }), 'per-host', /"options" must be a JSON object/],
    [new Uint8Array(1024 * 1024 + 1), 'per-host', /too large/],
  ];
  for (const [body, route, reason] of refused) {
    const parsed = parseRequest(body, route);
    assert.equal(parsed.ok, false);
    if (!parsed.ok) assert.match(parsed.reason, reason);
  }
});

test('aetherscale wire — flags follow Python truthiness; ids are 8 letters or a full cloudlet id', () => {
  assert.deepEqual([true, 1, 'yes', [0], { a: 1 }].map(pythonTruthy), [true, true, true, true, true]);
  assert.deepEqual([false, 0, '', null, undefined, [], {}].map(pythonTruthy), [false, false, false, false, false, false, false]);
  assert.deepEqual(parseVmRef('abcdefgh'), { kind: 'letters', letters: 'abcdefgh' });
  assert.deepEqual(parseVmRef('node-1.abcdefgh'), { kind: 'full', id: 'node-1.abcdefgh', host: 'node-1' });
  for (const bad of ['abcdefg', 'ABCDEFGH', 'abcdefgh ', '../abcdefgh', 12345678, null]) assert.equal(parseVmRef(bad).kind, 'invalid', String(bad));
  const own = ['h1.abcdefgh', 'h1.zzzzzzzz'];
  assert.equal(findOwnVm({ kind: 'letters', letters: 'zzzzzzzz' }, own), 'h1.zzzzzzzz');
  assert.equal(findOwnVm({ kind: 'full', id: 'h1.abcdefgh', host: 'h1' }, own), 'h1.abcdefgh');
  assert.equal(findOwnVm({ kind: 'letters', letters: 'qqqqqqqq' }, own), undefined);
});

test('aetherscale create-vm — only the base name of the image is used', () => {
  assert.deepEqual(imageBaseName('ubuntu'), { ok: true, name: 'ubuntu' });
  assert.deepEqual(imageBaseName('/var/lib/images/debian-12.qcow2'), { ok: true, name: 'debian-12' });
  assert.deepEqual(imageBaseName('C:\\images\\alpine-3.19.img'), { ok: true, name: 'alpine-3.19' });
  assert.deepEqual(imageBaseName('ubuntu-20.04'), { ok: true, name: 'ubuntu-20.04' }, 'an unknown "extension" is part of the name');
  for (const [value, reason] of [
    [undefined, /^Image not specified$/],
    ['', /^Image not specified$/],
    ['images/', /^Image not specified$/],
    [42, /must be a string/],
    ['..', /not a valid image name/],
    ['-rf', /not a valid image name/],
    ['a'.repeat(65), /not a valid image name/],
  ] as const) {
    const result = imageBaseName(value);
    assert.equal(result.ok, false, String(value));
    if (!result.ok) assert.match(result.reason, reason);
  }
});

test('aetherscale create-vm — allocating once the VM has an id, then starting; sizes from the options; ignored options named', async () => {
  const { ctx, calls, replies } = fakeContext(
    {
      'create-vm': async (_payload, onProgress) => {
        onProgress?.('allocating', { image: 'tiny' });
        onProgress?.('starting', { vm: 'h1.kqzvbxwe' });
        onProgress?.('running', { vm: 'h1.kqzvbxwe', pid: 1 });
        return okReply({ id: 'h1.kqzvbxwe', state: 'running' });
      },
    },
    { memory: 256, vcpus: 2, autostart: false },
  );
  const outcome = await runCommand(encode({ command: 'create-vm', options: { image: 'tiny.qcow2', 'public-ip': true, 'init-script': '#!/bin/sh' } }), 'competing', ctx);
  assert.deepEqual(outcome, { kind: 'answered', command: 'create-vm' });
  assert.deepEqual(calls, [{ type: 'create-vm', payload: { image: 'tiny', memory: 256, vcpus: 2, autostart: false } }]);
  assert.deepEqual(replies, [
    { 'execution-info': { status: 'success' }, response: { status: 'allocating', 'vm-id': 'kqzvbxwe' } },
    {
      'execution-info': { status: 'success' },
      response: { status: 'starting', 'vm-id': 'kqzvbxwe', hint: 'this host ignores init-script, public-ip: cloudlet runs no init scripts, and the VM gets the network this host is configured with' },
    },
  ]);
});

test('aetherscale create-vm — errors: no room goes elsewhere; a late failure follows allocating', async () => {
  const full = fakeContext({ 'create-vm': () => errReply('NO_CAPACITY', 'host h1 is full: 4/4 VMs') });
  assert.deepEqual(await runCommand(encode({ command: 'create-vm', options: { image: 'x' } }), 'competing', full.ctx), {
    kind: 'elsewhere',
    command: 'create-vm',
    code: 'NO_CAPACITY',
    reason: 'host h1 is full: 4/4 VMs',
  });
  assert.deepEqual(full.replies, [], 'the broker side decides whether to answer');

  const stopping = fakeContext({ 'create-vm': () => errReply('SHUTTING_DOWN', 'host "h1" is shutting down') });
  assert.equal((await runCommand(encode({ command: 'create-vm', options: { image: 'x' } }), 'competing', stopping.ctx)).kind, 'elsewhere');

  const broken = fakeContext({
    'create-vm': async (_payload, onProgress) => {
      onProgress?.('starting', { vm: 'h1.abcdefgh' });
      return errReply('QEMU_FAILED', 'QEMU did not start (exit 1): no kvm');
    },
  });
  await runCommand(encode({ command: 'create-vm', options: { image: 'x' } }), 'competing', broken.ctx);
  assert.deepEqual(
    broken.replies.map((r) => r['execution-info']),
    [{ status: 'success' }, { status: 'error', reason: 'QEMU did not start (exit 1): no kvm (QEMU_FAILED)' }],
  );
});

test('aetherscale list-vms — letters, global addresses only, hints like the original; an error reply while shutting down', async () => {
  const { ctx, replies } = fakeContext({
    'list-vms': listing(
      { id: 'h1.aaaaaaaa', addresses: [{ address: '10.0.0.5', scope: 'global' }, { address: 'fe80::1', scope: 'link' }, { address: '2001:db8::5', scope: 'global' }] },
      { id: 'h1.bbbbbbbb' },
      { id: 'h1.cccccccc', state: 'stopped' },
    ),
  });
  await runCommand(encode({ command: 'list-vms' }), 'per-host', ctx);
  assert.deepEqual(replies, [
    {
      'execution-info': { status: 'success' },
      response: [
        { 'vm-id': 'aaaaaaaa', 'ip-addresses': ['10.0.0.5', '2001:db8::5'] },
        { 'vm-id': 'bbbbbbbb', 'ip-addresses': [], hint: 'Could not retrieve IP address for guest' },
        { 'vm-id': 'cccccccc', 'ip-addresses': [], hint: 'VM "cccccccc" is not running' },
      ],
    },
  ]);
  // Before, a host draining for shutdown acked it in silence: the request was gone and its caller heard
  // nothing from that host, as if it had no VMs.
  const down = fakeContext({ 'list-vms': () => errReply('SHUTTING_DOWN', 'bye') });
  assert.equal((await runCommand(encode({ command: 'list-vms' }), 'per-host', down.ctx)).kind, 'answered');
  assert.deepEqual(down.replies, [{ 'execution-info': { status: 'error', reason: 'host h1 is shutting down: list-vms cannot be answered now; send it again once the host is back' } }]);
  for (const vm of ['abcdefgh', 'h1.abcdefgh']) {
    const stopping = fakeContext({ 'list-vms': () => errReply('SHUTTING_DOWN', 'bye') });
    await runCommand(encode({ command: 'stop-vm', options: { 'vm-id': vm } }), 'per-host', stopping.ctx);
    assert.deepEqual(stopping.replies, [{ 'execution-info': { status: 'error', reason: 'host h1 is shutting down: stop-vm cannot be answered now; send it again once the host is back' } }], vm);
  }
  const broken = fakeContext({ 'list-vms': () => errReply('BUSY', 'the queue for "list-vms" is full') });
  await runCommand(encode({ command: 'list-vms' }), 'per-host', broken.ctx);
  assert.deepEqual(broken.replies, [{ 'execution-info': { status: 'error', reason: 'host h1 could not list its VMs: the queue for "list-vms" is full (BUSY)' } }]);
});

test('aetherscale start/stop/delete — the owner answers; a VM of another host is not even looked up', async () => {
  const elsewhere = fakeContext({});
  assert.deepEqual(await runCommand(encode({ command: 'start-vm', options: { 'vm-id': 'h2.abcdefgh' } }), 'per-host', elsewhere.ctx), {
    kind: 'silent',
    command: 'start-vm',
    why: 'the VM belongs to host h2',
  });
  assert.deepEqual(elsewhere.calls, []);

  const notMine = fakeContext({ 'list-vms': listing({ id: 'h1.zzzzzzzz' }) });
  assert.equal((await runCommand(encode({ command: 'delete-vm', options: { 'vm-id': 'abcdefgh' } }), 'per-host', notMine.ctx)).kind, 'silent');
  assert.deepEqual(notMine.replies, []);

  const mine = fakeContext({
    'list-vms': listing({ id: 'h1.abcdefgh' }),
    'start-vm': () => okReply({ id: 'h1.abcdefgh', already: true }),
    'stop-vm': (payload) => okReply({ how: (payload as { force: boolean }).force ? 'quit' : 'powered-off' }),
    'delete-vm': () => okReply({ deleted: true }),
  });
  for (const options of [{ 'vm-id': 'abcdefgh' }, { 'vm-id': 'abcdefgh', kill: 1 }]) await runCommand(encode({ command: 'stop-vm', options }), 'per-host', mine.ctx);
  await runCommand(encode({ command: 'start-vm', options: { 'vm-id': 'abcdefgh' } }), 'per-host', mine.ctx);
  await runCommand(encode({ command: 'delete-vm', options: { 'vm-id': 'h1.abcdefgh' } }), 'per-host', mine.ctx);
  assert.deepEqual(
    mine.calls.filter((c) => c.type !== 'list-vms'),
    [
      { type: 'stop-vm', payload: { vm: 'h1.abcdefgh', force: false } },
      { type: 'stop-vm', payload: { vm: 'h1.abcdefgh', force: true } },
      { type: 'start-vm', payload: { vm: 'h1.abcdefgh' } },
      { type: 'delete-vm', payload: { vm: 'h1.abcdefgh' } },
    ],
  );
  assert.deepEqual(
    mine.replies.map((r) => (r as { response: unknown }).response),
    [
      { status: 'stopped', 'vm-id': 'abcdefgh' },
      { status: 'killed', 'vm-id': 'abcdefgh' },
      { status: 'starting', 'vm-id': 'abcdefgh', hint: 'VM "abcdefgh" was already started' },
      { status: 'deleted', 'vm-id': 'h1.abcdefgh' },
    ],
  );
});

test('aetherscale stop-vm — a slow graceful stop answers in time, and a failure after that is a second reply', async () => {
  let finish!: (reply: DispatchReply) => void;
  const { ctx, replies } = fakeContext(
    { 'list-vms': listing({ id: 'h1.abcdefgh' }), 'stop-vm': () => new Promise<DispatchReply>((resolve) => (finish = resolve)) },
    { stopReplyAfterMs: 20 },
  );
  const running = runCommand(encode({ command: 'stop-vm', options: { 'vm-id': 'abcdefgh' } }), 'per-host', ctx);
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(replies, [{ 'execution-info': { status: 'success' }, response: { status: 'stopped', 'vm-id': 'abcdefgh', hint: 'VM "abcdefgh" is still shutting down' } }]);
  finish(errReply('QMP_FAILED', 'the QEMU monitor did not answer'));
  assert.deepEqual(await running, { kind: 'answered', command: 'stop-vm' });
  assert.deepEqual(replies[1], { 'execution-info': { status: 'error', reason: 'the QEMU monitor did not answer (QMP_FAILED)' } });
});

test('aetherscale start/stop/delete — a VM id missing or malformed is an error reply', async () => {
  const { ctx, replies, calls } = fakeContext({});
  await runCommand(encode({ command: 'start-vm', options: {} }), 'per-host', ctx);
  await runCommand(encode({ command: 'stop-vm', options: { 'vm-id': 'x; reboot' } }), 'per-host', ctx);
  assert.deepEqual(replies, [
    { 'execution-info': { status: 'error', reason: 'VM ID not specified' } },
    { 'execution-info': { status: 'error', reason: 'Invalid VM ID "x; reboot": expected 8 lowercase letters' } },
  ]);
  assert.deepEqual(calls, []);
});

test('aetherscale hand-on — passed on until every consumer refused; a host that keeps getting it back waits for the others', () => {
  const full = { code: 'NO_CAPACITY' as const, reason: 'host c is full' };
  const now = 1_000_000;
  const pass = (refusedBy: string[], hops: number, extra: { pause?: boolean; full?: string[]; since?: number } = {}) => ({
    kind: 'pass',
    refusedBy,
    hops,
    images: [],
    full: extra.full ?? refusedBy,
    since: extra.since ?? now,
    pause: extra.pause ?? false,
  });
  const at = (headers: Record<string, unknown> | undefined, host: string, consumers: number, since = now) =>
    handOnDecision(headers && { 'x-aetherscale-since': since, ...headers }, host, consumers, full, now);
  assert.deepEqual(at(undefined, 'a', 3), pass(['a'], 1));
  assert.deepEqual(at({ 'x-aetherscale-refused-by': '["a"]', 'x-aetherscale-full': '["a"]', 'x-aetherscale-hops': 1 }, 'b', 3), pass(['a', 'b'], 2));
  assert.deepEqual(at({ 'x-aetherscale-refused-by': '["a","b"]', 'x-aetherscale-full': '["a","b"]', 'x-aetherscale-hops': 2 }, 'c', 3), {
    kind: 'answer',
    refusedBy: ['a', 'b', 'c'],
    reason: 'No host has capacity for the VM (refused by a, b, c): host c is full',
  });
  assert.deepEqual(at({ 'x-aetherscale-refused-by': '["a"]', 'x-aetherscale-full': '["a"]', 'x-aetherscale-hops': 1 }, 'a', 3), pass(['a'], 2, { pause: true }));
  // Before, 3 × consumers + 2 passes ended it: a host with room that was busy (its one prefetch slot taken)
  // never saw the request, and the caller heard "no host has capacity". Now only time ends it.
  assert.deepEqual(at({ 'x-aetherscale-refused-by': '["a"]', 'x-aetherscale-full': '["a"]', 'x-aetherscale-hops': 40 }, 'a', 2, now - HAND_ON_PATIENCE_MS + 1_000), pass(['a'], 41, { pause: true, since: now - HAND_ON_PATIENCE_MS + 1_000 }));
  assert.deepEqual(at({ 'x-aetherscale-refused-by': '["a"]', 'x-aetherscale-full': '["a"]', 'x-aetherscale-hops': 40 }, 'a', 2, now - HAND_ON_PATIENCE_MS - 1), {
    kind: 'answer',
    refusedBy: ['a'],
    reason: `No host has capacity for the VM (refused by a): host c is full; 1 other host did not take it within ${HAND_ON_PATIENCE_MS / 1000} s (busy with other requests?)`,
  });
  assert.equal(handOnDecision(undefined, 'a', 1, full, now).kind, 'answer', 'alone: answer at once');
  assert.deepEqual(at({ 'x-aetherscale-refused-by': 'garbage', 'x-aetherscale-since': 'garbage' }, 'a', 2), pass(['a'], 1));
  // A start time from the future (another host's clock ahead) counts from now.
  assert.deepEqual(at({ 'x-aetherscale-refused-by': '["b"]', 'x-aetherscale-full': '["b"]' }, 'a', 3, now + 3_600_000), pass(['b', 'a'], 1, { full: ['b', 'a'] }));
});

test('aetherscale hand-on — a host that has the image but no room is said so, not "the image does not exist"', () => {
  // Before, the last refusal decided the answer: ha (image, but full) then hb (no such image) answered
  // "Image "tiny" does not exist; available images: other".
  const last = handOnDecision(
    { 'x-aetherscale-refused-by': '["ha"]', 'x-aetherscale-full': '["ha"]', 'x-aetherscale-hops': 1, 'x-aetherscale-since': 5 },
    'hb',
    2,
    { code: 'IMAGE_NOT_FOUND', reason: 'Image "tiny" does not exist; available images: other', image: 'tiny', available: ['other'] },
    10,
  );
  assert.deepEqual(last, { kind: 'answer', refusedBy: ['ha', 'hb'], reason: 'No host has capacity for the VM (refused by ha, hb): ha has the image but no room' });
});

test('aetherscale hand-on — an image no host has is answered with every host\'s images', async () => {
  const missing = fakeContext({ 'create-vm': () => errReply('IMAGE_NOT_FOUND', 'no image "x"; available: b, a', { image: 'x', available: ['b', 'a'] }) });
  const outcome = await runCommand(encode({ command: 'create-vm', options: { image: 'x' } }), 'competing', missing.ctx);
  assert.deepEqual(outcome, { kind: 'elsewhere', command: 'create-vm', code: 'IMAGE_NOT_FOUND', reason: 'Image "x" does not exist; available images: b, a', image: 'x', available: ['b', 'a'] });
  assert.deepEqual(missing.replies, [], 'another host may have it');
  const first = handOnDecision(undefined, 'h1', 2, { code: 'IMAGE_NOT_FOUND', reason: '', image: 'x', available: ['b', 'a'] }, 7);
  assert.deepEqual(first, { kind: 'pass', refusedBy: ['h1'], hops: 1, images: ['a', 'b'], full: [], since: 7, pause: false });
  const last = handOnDecision({ 'x-aetherscale-refused-by': '["h1"]', 'x-aetherscale-hops': 1, 'x-aetherscale-images': '["a","b"]' }, 'h2', 2, {
    code: 'IMAGE_NOT_FOUND',
    reason: '',
    image: 'x',
    available: ['c'],
  });
  assert.deepEqual(last, { kind: 'answer', refusedBy: ['h1', 'h2'], reason: 'Image "x" does not exist; available images: a, b, c' });
});

test('aetherscale options — the URL from the option or CLOUDLET_AMQP_URL, never logged with its password', () => {
  const options = (extra: Record<string, unknown> = {}) => aetherscaleOptionsSchema.parse(extra);
  assert.equal(brokerUrl(options({ url: 'amqp://u:p@b:5672' }), { CLOUDLET_AMQP_URL: 'amqp://other' }), 'amqp://u:p@b:5672');
  assert.equal(brokerUrl(options(), { CLOUDLET_AMQP_URL: 'amqps://u:p@b/vh' }), 'amqps://u:p@b/vh');
  assert.throws(() => brokerUrl(options(), {}), /no broker URL/);
  assert.throws(() => brokerUrl(options(), { CLOUDLET_AMQP_URL: 'http://u:secret@b' }), (error: Error) => !error.message.includes('secret'));
  assert.equal(maskCredentials('amqp://guest:s3cr3t@rabbit:5672/vh'), 'amqp://guest:***@rabbit:5672/vh');
  assert.equal(maskCredentials('amqp://rabbit:5672'), 'amqp://rabbit:5672');
  assert.equal(maskCredentials('amqp://guest:p@ss@rabbit:5672/vh'), 'amqp://guest:***@rabbit:5672/vh');
  assert.deepEqual(options(), { exchange: 'computing', competingQueue: 'computing-competing', memory: 512, vcpus: 1, autostart: true, prefetch: 16, stopReplyAfterMs: 4_000 });
  assert.equal(aetherscaleOptionsSchema.safeParse({ exchange: 'amq.direct' }).success, false);
  assert.equal(aetherscaleOptionsSchema.safeParse({ colour: 'red' }).success, false, 'unknown options are refused');
});

test('aetherscale bad values — deeply nested or huge values are named by type or cut, never serialised whole', async () => {
  // Before: a command, vm-id or image nested 200,000 arrays deep answered "the host failed while handling the
  // request: Maximum call stack size exceeded", and a 900 KB command was echoed whole in the reason.
  const deep = JSON.parse(`${'['.repeat(200_000)}${']'.repeat(200_000)}`) as unknown;
  const parsed = parseRequest(encode(`{"command": ${'['.repeat(200_000)}${']'.repeat(200_000)}}`), 'per-host');
  assert.deepEqual(parsed, { ok: false, reason: 'Invalid command (an array of 1) specified (known: create-vm, list-vms, start-vm, stop-vm, delete-vm)' });
  const huge = parseRequest(encode({ command: 'x'.repeat(900_000) }), 'per-host');
  assert.ok(!huge.ok && huge.reason.length < 300, JSON.stringify(huge).slice(0, 400));
  assert.match(huge.ok ? '' : huge.reason, /^Invalid command "x{100}…" specified/);
  assert.deepEqual(parseVmRef(deep), { kind: 'invalid', reason: 'Invalid VM ID (an array of 1): expected 8 lowercase letters' });
  assert.deepEqual(parseVmRef(5), { kind: 'invalid', reason: 'Invalid VM ID 5: expected 8 lowercase letters' });
  const { ctx, replies } = fakeContext({});
  await runCommand(encode(`{"command": "create-vm", "options": {"image": {"a": ${'['.repeat(200_000)}${']'.repeat(200_000)}}}}`), 'competing', ctx);
  assert.deepEqual(replies, [{ 'execution-info': { status: 'error', reason: 'Image must be a string (a base image name), got an object' } }]);
});

test('aetherscale options — a URL amqplib cannot use, or sizes past qemu-backend\'s limits, are refused at config check', async () => {
  // Before, "amqp://127.0.0.1:99999" and "?heartbeat=abc" passed and failed at start with amqplib's own
  // puzzling words, and memory 16384 with qemu-backend's maxMemoryMiB 8192 passed and every create failed.
  for (const url of ['amqp://127.0.0.1:99999', 'amqp://', 'amqp://h/?heartbeat=abc']) {
    const parsed = aetherscaleOptionsSchema.safeParse({ url });
    assert.equal(parsed.success, false, url);
    assert.match(parsed.error?.issues[0]?.message ?? '', /^an amqp\[s\]:\/\/host\[:port\]\[\/vhost\] URL amqplib can use; this one: /, url);
  }
  assert.equal(aetherscaleOptionsSchema.safeParse({ url: 'amqps://u:p@broker.example:5671/vh?heartbeat=30' }).success, true);
  const config = (memory: number, vcpus: number) =>
    rawConfigFrom(
      {
        plugins: [
          { use: 'qemu-backend', options: { imagesDir: '/srv/images', limits: { maxMemoryMiB: 8192, maxVcpus: 8 } } },
          { use: 'protocol-aetherscale', options: { url: 'amqp://127.0.0.1', memory, vcpus } },
        ],
      },
      '/etc/cloudlet/test.yaml',
    );
  const checked = await checkHostConfig(config(16_384, 16));
  assert.equal(checked.ok, false);
  assert.deepEqual(
    checked.ok ? [] : checked.problems.map((p) => [p.code, p.path]),
    [
      ['PLUGIN_OPTIONS_INVALID', 'plugins[1].options.memory'],
      ['PLUGIN_OPTIONS_INVALID', 'plugins[1].options.vcpus'],
    ],
  );
  assert.equal((await checkHostConfig(config(8_192, 8))).ok, true);
});
