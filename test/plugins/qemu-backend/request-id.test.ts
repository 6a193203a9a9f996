/**
 * create-vm is idempotent per request id on a host: the same request run again answers with the VM it made,
 * or starts over from what its dead run left. The handler runs in-process here with a fake context; a QEMU
 * that fails to start stands in where a VM would boot (the real boot is in test/e2e/qemu-backend.test.ts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test, { type TestContext } from 'node:test';
import type { HandlerContext } from '../../../core/plugin-api.ts';
import createVm from '../../../plugins/qemu-backend/handlers/create-vm.ts';
import deleteVmHandler from '../../../plugins/qemu-backend/handlers/delete-vm.ts';
import findCreate from '../../../plugins/qemu-backend/handlers/find-create.ts';
import { qemuOptionsSchema, type QemuOptions } from '../../../plugins/qemu-backend/options.ts';
import { createVmPayload, findCreatePayload, VM_ID_PATTERN, vmRefPayload } from '../../../plugins/qemu-backend/schemas.ts';
import { vmPaths, writeRecord, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { deletedByRequest, deletedIds, deletedRecord, recordDeleted } from '../../../plugins/qemu-backend/tombstones.ts';
import { holdClaim } from './claim-helpers.ts';
import { vmIdForRequest } from '../../../plugins/qemu-backend/vm-id.ts';
import { requireRecord } from '../../../plugins/qemu-backend/vm-ops.ts';
import { processAlive, tempDir, until } from '../../helpers.ts';

const AGENT_STARTED_AT = Date.now() - 60_000;

async function setUp(t: TestContext, limits: Partial<QemuOptions['limits']> = {}) {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'images', 'tiny'), { recursive: true });
  await writeFile(join(dir, 'images', 'tiny', 'vmlinuz'), 'kernel');
  await writeFile(join(dir, 'images', 'tiny', 'initrd.img'), 'initrd');
  // A QEMU that cannot start: the create fails after announcing its id, and cleans up after itself.
  const qemuBinary = join(dir, 'failing-qemu');
  await writeFile(qemuBinary, '#!/bin/sh\necho "no QEMU in this test" >&2\nexit 1\n', { mode: 0o755 });
  const options = qemuOptionsSchema.parse({
    imagesDir: join(dir, 'images'),
    stateDir: join(dir, 'qemu'),
    ipBinary: join(dir, 'no-ip'),
    qemuBinary,
    accel: 'tcg',
    network: { mode: 'user' },
    limits: { maxVms: 4, maxTotalMemoryMiB: 1024, maxMemoryMiB: 512, maxVcpus: 2, ...limits },
  });
  await mkdir(options.stateDir, { recursive: true });
  return options;
}

function run(options: QemuOptions, requestId: string, payload: Record<string, unknown>, deadline = Date.now() + 60_000, cancelGraceMs = 1_000) {
  const stages: { stage: string; detail?: Record<string, unknown> }[] = [];
  const log = { debug() {}, info() {}, warn() {}, error() {} } as unknown as HandlerContext['log'];
  const ctx = {
    options,
    host: { id: 'h1', agentVersion: 'test', startedAt: AGENT_STARTED_AT },
    message: { id: requestId, type: 'create-vm', deadline, cancelGraceMs },
    log,
    signal: new AbortController().signal,
    progress: (stage: string, detail?: Record<string, unknown>) => stages.push({ stage, ...(detail ? { detail } : {}) }),
    plugins: [],
    providers: {},
    inFlight: {},
  } as HandlerContext<QemuOptions>;
  return { stages, result: Promise.resolve().then(() => createVm(createVmPayload.parse(payload), ctx)) };
}

function record(id: string, fields: Partial<VmRecord> = {}): VmRecord {
  const at = '2026-11-27T10:00:00.000Z';
  return { v: 1, id, host: 'h1', image: 'tiny', imageKind: 'kernel', memoryMiB: 128, vcpus: 1, mac: '02:00:00:00:00:01', network: { mode: 'user' }, autostart: false, desired: 'running', createdAt: at, updatedAt: at, ...fields };
}

const exists = (path: string) => access(path).then(() => true, () => false);

test('request id — the VM id derives from host and request id: the same for a repeat, another for another host or request', () => {
  const id = vmIdForRequest('h1', 'req-1');
  assert.match(id, /^h1\.[a-z]{8}$/);
  assert.match(id, VM_ID_PATTERN);
  assert.equal(vmIdForRequest('h1', 'req-1'), id);
  assert.notEqual(vmIdForRequest('h2', 'req-1').slice(3), id.slice(3), 'two hosts would share a tap name');
  assert.notEqual(vmIdForRequest('h1', 'req-2'), id);
});

test('request id — a create sent again answers with the VM its id made, as it is now, even on a host that is now full', async (t) => {
  const options = await setUp(t, { maxVms: 1 });
  await writeRecord(options.stateDir, record('h1.abcdefgh', { request: 'req-1', name: 'web', desired: 'stopped' }));
  const again = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1, name: 'web' });
  const result = (await again.result) as { id: string; state: string; already: boolean; hint: string };
  assert.equal(result.id, 'h1.abcdefgh');
  assert.equal(result.state, 'stopped', 'what the VM is now, not what the create made');
  assert.equal(result.already, true);
  assert.equal(result.hint, 'request req-1 made this VM already (2026-11-27T10:00:00.000Z); nothing was done');
  assert.deepEqual(again.stages, [], 'nothing was started');
  assert.deepEqual(await readdir(options.stateDir), ['h1.abcdefgh']);
  // Another request on the full host is refused as before.
  await assert.rejects(run(options, 'req-2', { image: 'tiny', memory: 128, vcpus: 1 }).result, { code: 'NO_CAPACITY' });
});

test('request id — the same id with other settings is REQUEST_ID_REUSED, naming what differs; nothing is made', async (t) => {
  const options = await setUp(t);
  await writeRecord(options.stateDir, record('h1.abcdefgh', { request: 'req-1' }));
  await assert.rejects(run(options, 'req-1', { image: 'tiny', memory: 256, vcpus: 1, network: 'none' }).result, (error: Error & { code?: string; details?: unknown }) => {
    assert.equal(error.code, 'REQUEST_ID_REUSED');
    assert.equal(error.message, 'request req-1 made VM h1.abcdefgh already, with other settings: memory 256 (made with 128), network "none" (made with "user"); give a new request a new id');
    assert.deepEqual(error.details, { vm: 'h1.abcdefgh', request: 'req-1', fields: ['memory', 'network'] });
    return true;
  });
  // Without `network`, the host's mode applied: not a difference.
  const same = (await run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 }).result) as { already: boolean };
  assert.equal(same.already, true);
  assert.deepEqual(await readdir(options.stateDir), ['h1.abcdefgh']);
});

test("request id — a run after its agent died mid-create removes its own leftover and starts over under the same id", async (t) => {
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  const paths = vmPaths(options.stateDir, id);
  await mkdir(paths.dir, { recursive: true });
  await writeFile(join(paths.dir, 'disk-of-the-dead-run'), 'x');
  // The mark of an agent process that is gone.
  await writeFile(paths.creating, JSON.stringify({ pid: process.pid + 1_000_000, agentStartedAt: AGENT_STARTED_AT - 10_000, until: Date.now() + 60_000, request: 'req-1' }));
  const again = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
  await assert.rejects(again.result, { code: 'QEMU_FAILED' });
  assert.deepEqual(again.stages.find((s) => s.stage === 'starting')?.detail, { vm: id });
  assert.equal(await exists(join(paths.dir, 'disk-of-the-dead-run')), false, 'the leftover went before the create began again');
  assert.deepEqual(await readdir(options.stateDir), ['.claims'], 'the failed create cleaned up after itself');
  assert.deepEqual(await readdir(join(options.stateDir, '.claims')), [], 'and left no claim held');
});

test('request id — a leftover without a mark (a clean-up cut short by the cancel grace, a mark never written) is one too', async (t) => {
  for (const mark of [undefined, '{"pid":']) {
    const options = await setUp(t);
    const id = vmIdForRequest('h1', 'req-1');
    const paths = vmPaths(options.stateDir, id);
    await mkdir(paths.dir, { recursive: true });
    await writeFile(join(paths.dir, 'disk.qcow2'), 'the overlay of a run whose clean-up was cut short');
    if (mark !== undefined) await writeFile(paths.creating, mark);
    const again = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
    await assert.rejects(again.result, { code: 'QEMU_FAILED' });
    assert.deepEqual(again.stages.find((s) => s.stage === 'starting')?.detail, { vm: id }, `mark: ${String(mark)}`);
    assert.deepEqual(await readdir(options.stateDir), ['.claims']);
    assert.deepEqual(await readdir(join(options.stateDir, '.claims')), []);
  }
});

test('request id — the derived id held by a VM (its vm.json usable or not) or by a create of another request at work means a random id', async (t) => {
  const id = vmIdForRequest('h1', 'req-1');
  const chosen = async (options: QemuOptions) => {
    const attempt = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
    await assert.rejects(attempt.result, { code: 'QEMU_FAILED' });
    return attempt.stages.find((s) => s.stage === 'starting')?.detail?.vm as string;
  };

  const taken = await setUp(t);
  await writeRecord(taken.stateDir, record(id, { request: 'someone-else' }));
  const other = await chosen(taken);
  assert.match(other, /^h1\.[a-z]{8}$/);
  assert.notEqual(other, id);
  assert.equal(await exists(vmPaths(taken.stateDir, id).record), true, 'the other VM is untouched');

  // A VM whose vm.json cannot be used (hand-edited, say), with the stale mark of this very request beside it
  // (its agent died between writing vm.json and removing the mark): a VM, perhaps running, not a leftover.
  const unreadable = await setUp(t);
  const paths = vmPaths(unreadable.stateDir, id);
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.record, '{"v": 1, "id": "hand-edited');
  await writeFile(paths.disk, 'its disk');
  await writeFile(paths.creating, JSON.stringify({ pid: process.pid + 1_000_000, agentStartedAt: 1, until: Date.now() + 60_000, request: 'req-1' }));
  assert.notEqual(await chosen(unreadable), id);
  assert.equal(await exists(paths.disk), true, "the VM's disk is kept");

  const atWork = await setUp(t);
  const busy = vmPaths(atWork.stateDir, id);
  await mkdir(busy.dir, { recursive: true });
  await writeFile(busy.creating, JSON.stringify({ pid: process.pid, agentStartedAt: AGENT_STARTED_AT, until: Date.now() + 60_000, request: 'req-9' }));
  assert.notEqual(await chosen(atWork), id);
  assert.equal(await exists(busy.creating), true, "another request's create at work is left alone");
});

test('request id — a run of the request while its own create is still at work in this agent is told to retry (VM_NOT_READY)', async (t) => {
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  const paths = vmPaths(options.stateDir, id);
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.creating, JSON.stringify({ pid: process.pid, agentStartedAt: AGENT_STARTED_AT, until: Date.now() + 60_000, request: 'req-1' }));
  await assert.rejects(run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 }).result, (error: Error & { code?: string; details?: unknown }) => {
    assert.equal(error.code, 'VM_NOT_READY');
    assert.deepEqual(error.details, { vm: id });
    return true;
  });
  assert.equal(await exists(paths.creating), true, 'the create at work is left alone');
});

function deleteVm(options: QemuOptions, vm: string, deadline = Date.now() + 60_000) {
  const ctx = {
    options,
    host: { id: 'h1', agentVersion: 'test', startedAt: AGENT_STARTED_AT },
    message: { id: `delete-${vm}`, type: 'delete-vm', deadline, cancelGraceMs: 1_000 },
    log: { debug() {}, info() {}, warn() {}, error() {} } as unknown as HandlerContext['log'],
    signal: new AbortController().signal,
    progress: () => undefined,
    plugins: [],
    providers: {},
    inFlight: {},
  } as HandlerContext<QemuOptions>;
  return deleteVmHandler(vmRefPayload.parse({ vm }), ctx) as Promise<{ deleted: boolean; already: boolean; hint?: string }>;
}

test('deleted — a create sent again after its VM was deleted is REQUEST_ID_REUSED naming the deletion; the id never comes back', async (t) => {
  // Before, the repeat made a new VM under the deleted one's id, where a late retry of the old delete reached it.
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  await writeRecord(options.stateDir, record(id, { request: 'req-1', desired: 'stopped' }));
  const deleted = await deleteVm(options, id);
  assert.deepEqual([deleted.deleted, deleted.already], [true, false]);
  assert.equal(await exists(vmPaths(options.stateDir, id).dir), false);
  const again = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
  await assert.rejects(again.result, (error: Error & { code?: string; details?: { vm: string; request: string; deletedAt: string } }) => {
    assert.equal(error.code, 'REQUEST_ID_REUSED');
    assert.match(error.message, new RegExp(`^request req-1 made VM ${id.replace('.', '\\.')}, which was deleted at \\S+; a new VM needs a new request id$`));
    assert.deepEqual([error.details?.vm, error.details?.request], [id, 'req-1']);
    return true;
  });
  assert.deepEqual(again.stages, [], 'refused before anything, as a repeat is');
  assert.equal(await exists(vmPaths(options.stateDir, id).dir), false, 'nothing made');
  // The deleted id, asked about again: deleted already, and when.
  const twice = await deleteVm(options, id);
  assert.deepEqual([twice.deleted, twice.already], [false, true]);
  assert.match(twice.hint ?? '', /^deleted already, at \d{4}-/);
  await assert.rejects(requireRecord(options, id, { id: 'h1', startedAt: AGENT_STARTED_AT }), (error: Error & { code?: string }) => error.code === 'VM_NOT_FOUND' && /it was deleted at /.test(error.message));
});

test('deleted — a deleted id is not given to another request: not as its derived id, not as a random one', async (t) => {
  const options = await setUp(t);
  const derived = vmIdForRequest('h1', 'req-2');
  await recordDeleted(options.stateDir, derived, 'someone-else'); // a hash collision, as far as req-2 knows
  const attempt = run(options, 'req-2', { image: 'tiny', memory: 128, vcpus: 1 });
  await assert.rejects(attempt.result, { code: 'QEMU_FAILED' });
  const chosen = attempt.stages.find((s) => s.stage === 'starting')?.detail?.vm as string;
  assert.match(chosen, /^h1\.[a-z]{8}$/);
  assert.notEqual(chosen, derived);
  assert.ok(!(await deletedIds(options.stateDir)).has(chosen));
});

test('deleted — found by request too: a VM that had a random id; and a tombstone naming no request at the derived id', async (t) => {
  // From a review: only the derived id's tombstone naming this very request was checked.
  const options = await setUp(t);
  await writeRecord(options.stateDir, record('h1.zzzzzzzz', { request: 'req-3', desired: 'stopped' })); // its derived id was taken
  assert.equal((await deleteVm(options, 'h1.zzzzzzzz')).deleted, true);
  await assert.rejects(run(options, 'req-3', { image: 'tiny', memory: 128, vcpus: 1 }).result, (error: Error & { code?: string; details?: { vm: string } }) => {
    assert.deepEqual([error.code, error.details?.vm], ['REQUEST_ID_REUSED', 'h1.zzzzzzzz']);
    return true;
  });
  // A VM whose record could not be read was deleted: its tombstone cannot say which request made it.
  await recordDeleted(options.stateDir, vmIdForRequest('h1', 'req-4'), undefined);
  await assert.rejects(run(options, 'req-4', { image: 'tiny', memory: 128, vcpus: 1 }).result, { code: 'REQUEST_ID_REUSED' });
});

test('deleted — the newest 10,000 deletions are remembered (here 3); the oldest go first', async (t) => {
  const options = await setUp(t);
  const ids = ['h1.aaaaaaaa', 'h1.bbbbbbbb', 'h1.cccccccc'];
  for (const id of ids) await recordDeleted(options.stateDir, id, `req-${id}`, 3);
  // Told apart by age, as a real host's are: minutes apart.
  for (const [i, id] of ids.entries()) {
    const at = new Date(Date.now() - (3 - i) * 60_000);
    await utimes(join(options.stateDir, '.deleted', id), at, at);
    await utimes(join(options.stateDir, '.deleted', 'requests', createHash('sha256').update(`req-${id}`).digest('hex')), at, at);
  }
  await recordDeleted(options.stateDir, 'h1.dddddddd', 'req-d', 3);
  assert.deepEqual([...(await deletedIds(options.stateDir))].sort(), ['h1.bbbbbbbb', 'h1.cccccccc', 'h1.dddddddd']);
  assert.equal((await deletedRecord(options.stateDir, 'h1.cccccccc'))?.request, 'req-h1.cccccccc');
  assert.equal((await deletedByRequest(options.stateDir, 'req-h1.cccccccc'))?.vm, 'h1.cccccccc');
  assert.equal(await deletedByRequest(options.stateDir, 'req-h1.aaaaaaaa'), undefined, 'pruned by request too');
  assert.deepEqual((await readdir(join(options.stateDir, '.deleted'))).filter((name) => name.endsWith('.tmp')), [], 'no temp file left');
});

test('deleted — a tombstone that cannot be written (a full disk, say) does not stop the delete', async (t) => {
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  await writeRecord(options.stateDir, record(id, { request: 'req-1', desired: 'stopped' }));
  await writeFile(join(options.stateDir, '.deleted'), 'a file where the folder should be');
  const deleted = await deleteVm(options, id);
  assert.deepEqual([deleted.deleted, deleted.already], [true, false]);
  assert.equal(await exists(vmPaths(options.stateDir, id).dir), false);
});

test('find-create — says what a request left on this host: its VM, a create at work or accepted, a leftover, a deletion, or nothing', async (t) => {
  const options = await setUp(t);
  const find = async (request: string, inFlight: Record<string, string[]> = {}) => {
    const ctx = { options, host: { id: 'h1', agentVersion: 'test', startedAt: AGENT_STARTED_AT }, message: { id: 'find-1', type: 'find-create', deadline: Date.now() + 10_000, cancelGraceMs: 1_000 }, inFlight } as unknown as HandlerContext<QemuOptions>;
    return (await findCreate(findCreatePayload.parse({ request }), ctx)) as Record<string, unknown>;
  };
  assert.deepEqual(await find('req-none'), { host: 'h1', request: 'req-none', found: null });
  // Nothing on disk, but a create of it accepted here that waits for its thread: it will make the VM here.
  // Another type's request of the same id, or a create of another request, is not it.
  assert.deepEqual(await find('req-queued', { 'create-vm': ['req-other', 'req-queued'] }), { host: 'h1', request: 'req-queued', found: 'accepted' });
  assert.deepEqual(await find('req-queued', { 'create-vm': ['req-other'], 'delete-vm': ['req-queued'] }), { host: 'h1', request: 'req-queued', found: null });

  // Its VM, by the request in vm.json (the id need not be the derived one).
  await writeRecord(options.stateDir, record('h1.abcdefgh', { request: 'req-made' }));
  assert.deepEqual(await find('req-made'), { host: 'h1', request: 'req-made', found: 'vm', vm: 'h1.abcdefgh' });

  // A folder without vm.json whose mark names the request: at work while the mark holds, else a leftover.
  const atWork = vmPaths(options.stateDir, 'h1.workinga');
  await mkdir(atWork.dir, { recursive: true });
  await writeFile(atWork.creating, JSON.stringify({ pid: process.pid, agentStartedAt: AGENT_STARTED_AT, until: Date.now() + 60_000, request: 'req-work' }));
  assert.deepEqual(await find('req-work'), { host: 'h1', request: 'req-work', found: 'creating', vm: 'h1.workinga' });
  await writeFile(atWork.creating, JSON.stringify({ pid: process.pid + 1_000_000, agentStartedAt: AGENT_STARTED_AT - 10_000, until: Date.now() + 60_000, request: 'req-work' }));
  assert.deepEqual(await find('req-work'), { host: 'h1', request: 'req-work', found: 'leftover', vm: 'h1.workinga' });
  // A rerun of it waiting here will remove that leftover and start over: it is what matters.
  assert.deepEqual(await find('req-work', { 'create-vm': ['req-work'] }), { host: 'h1', request: 'req-work', found: 'accepted' });
  // At the derived id, a folder with no mark counts as the request's leftover, as create-vm counts it; one
  // whose mark names another request does not.
  const derived = vmIdForRequest('h1', 'req-bare');
  await mkdir(vmPaths(options.stateDir, derived).dir, { recursive: true });
  assert.deepEqual(await find('req-bare'), { host: 'h1', request: 'req-bare', found: 'leftover', vm: derived });
  await writeFile(vmPaths(options.stateDir, derived).creating, JSON.stringify({ pid: process.pid, agentStartedAt: AGENT_STARTED_AT, until: Date.now() + 60_000, request: 'req-other' }));
  assert.deepEqual(await find('req-bare'), { host: 'h1', request: 'req-bare', found: null });

  // A tombstone at the derived id that names no request (a VM deleted with an unreadable record) counts, as
  // create-vm counts it.
  await recordDeleted(options.stateDir, vmIdForRequest('h1', 'req-unnamed'), undefined);
  assert.deepEqual(await find('req-unnamed').then((r) => [r.found, r.vm]), ['deleted', vmIdForRequest('h1', 'req-unnamed')]);
  await recordDeleted(options.stateDir, 'h1.deletedx', 'req-gone');
  const gone = await find('req-gone');
  assert.deepEqual([gone.found, gone.vm, typeof gone.deletedAt], ['deleted', 'h1.deletedx', 'string']);
  // What is on disk comes first: a create waiting behind a deletion will be refused REQUEST_ID_REUSED, one
  // waiting behind its own VM will answer "already".
  assert.equal((await find('req-gone', { 'create-vm': ['req-gone'] })).found, 'deleted');
  assert.equal((await find('req-made', { 'create-vm': ['req-made'] })).found, 'vm');

  assert.equal(findCreatePayload.safeParse({ request: 'two words' }).success, false);
  assert.equal(findCreatePayload.safeParse({ request: 'r', extra: 1 }).success, false);
});

test('deleted — a leftover gets its tombstone before it is removed: a removal that fails half-way leaves the tombstone', async (t) => {
  // Before, the tombstone was written after the removal: an agent killed in between left a deleted leftover
  // without one, and a create sent again would have made a new VM under that id. A bind mount inside the
  // folder makes the removal fail here (EBUSY), as a kill would end it.
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-left');
  const paths = vmPaths(options.stateDir, id);
  const busy = join(paths.dir, 'busy');
  const source = join(options.stateDir, '..', 'empty-source');
  await mkdir(busy, { recursive: true });
  await mkdir(source, { recursive: true });
  await writeFile(paths.creating, JSON.stringify({ pid: process.pid + 1_000_000, agentStartedAt: AGENT_STARTED_AT - 10_000, until: 0, request: 'req-left' }));
  const mounted = spawnSync('mount', ['--bind', source, busy], { encoding: 'utf8' });
  assert.equal(mounted.status, 0, `mount --bind: ${mounted.stderr}`);
  try {
    await assert.rejects(deleteVm(options, id), /EBUSY|busy/i);
  } finally {
    assert.equal(spawnSync('umount', [busy], { encoding: 'utf8' }).status, 0, 'umount');
  }
  assert.equal((await deletedRecord(options.stateDir, id))?.request, 'req-left', 'the tombstone was written first');
  // Done again, the delete finishes, and the request stays refused.
  const deleted = await deleteVm(options, id);
  assert.equal(deleted.deleted, true);
  await assert.rejects(run(options, 'req-left', { image: 'tiny', memory: 128, vcpus: 1 }).result, { code: 'REQUEST_ID_REUSED' });
});

async function leftover(options: QemuOptions, id: string) {
  const paths = vmPaths(options.stateDir, id);
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.disk, 'the overlay a dead run left');
  await writeFile(paths.creating, JSON.stringify({ pid: process.pid + 1_000_000, agentStartedAt: AGENT_STARTED_AT - 10_000, until: Date.now() + 60_000, request: 'req-1' }));
  return paths;
}

const settledYet = (promise: Promise<unknown>) => {
  const state = { settled: false };
  promise.then(() => (state.settled = true), () => (state.settled = true));
  return state;
};

test('claim — a run that finds a delete at work on its leftover waits for it, then honours the deletion: REQUEST_ID_REUSED, nothing made', async (t) => {
  // Before, the create removed the leftover and went on while the delete removed the folder it worked in.
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  const paths = await leftover(options, id);
  const claim = await holdClaim(options.stateDir, id, 'delete-vm');
  const again = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
  const state = settledYet(again.result);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(state.settled, false, 'the create waits for the claim');
  assert.equal(again.stages.some((s) => s.stage === 'starting'), false);
  assert.equal(await exists(paths.disk), true, 'the create has not touched the leftover');
  // What delete-vm does under its claim: the tombstone, then the leftover goes; then the claim is released.
  await recordDeleted(options.stateDir, id, 'req-1');
  await rm(paths.dir, { recursive: true });
  await rm(claim);
  await assert.rejects(again.result, { code: 'REQUEST_ID_REUSED' });
  assert.equal(await exists(paths.dir), false, 'nothing made');
});

test('claim — a delete of a leftover that a run of its request has taken over meanwhile answers VM_NOT_READY; nothing removed, no tombstone', async (t) => {
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  const paths = await leftover(options, id);
  const claim = await holdClaim(options.stateDir, id, 'create-vm');
  const deleting = deleteVm(options, id);
  const state = settledYet(deleting);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(state.settled, false, 'the delete waits for the claim');
  // What create-vm does under its claim: the leftover goes, a fresh folder and its mark come; then it releases.
  await rm(paths.dir, { recursive: true });
  await mkdir(paths.dir);
  await writeFile(paths.creating, JSON.stringify({ pid: process.pid, agentStartedAt: AGENT_STARTED_AT, until: Date.now() + 60_000, request: 'req-1' }));
  await rm(claim);
  await assert.rejects(deleting, { code: 'VM_NOT_READY' });
  assert.equal(await exists(paths.creating), true, 'the create at work keeps its folder');
  assert.equal(await deletedRecord(options.stateDir, id), undefined, 'no tombstone for a VM that is being made');
});

test('claim — a delete whose wait for a claim would reach its deadline answers VM_NOT_READY before it, naming the holder', async (t) => {
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  const paths = await leftover(options, id);
  await holdClaim(options.stateDir, id, 'sweeper');
  const started = Date.now();
  await assert.rejects(deleteVm(options, id, started + 1_600), (error: Error & { code?: string; details?: unknown }) => {
    assert.equal(error.code, 'VM_NOT_READY');
    assert.equal(error.message, `VM "${id}" is being worked on by sweeper; send the delete again shortly`);
    assert.deepEqual(error.details, { vm: id, heldBy: 'sweeper' });
    return true;
  });
  assert.ok(Date.now() < started + 1_600, 'answered before its deadline');
  assert.equal(await exists(paths.disk), true);
});

test('claim — a create whose derived id stays claimed answers VM_NOT_READY before its deadline, naming the holder; nothing made', async (t) => {
  const options = await setUp(t);
  const id = vmIdForRequest('h1', 'req-1');
  await holdClaim(options.stateDir, id, 'sweeper');
  const attempt = run(options, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 }, Date.now() + 1_600);
  await assert.rejects(attempt.result, (error: Error & { code?: string; details?: unknown }) => {
    assert.equal(error.code, 'VM_NOT_READY');
    assert.equal(error.message, `VM ${id}, which request req-1 leads to, is being worked on by sweeper; send the request again shortly`);
    assert.deepEqual(error.details, { vm: id, heldBy: 'sweeper' });
    return true;
  });
  assert.equal(await exists(vmPaths(options.stateDir, id).dir), false);
});

test('claim — a create that fails cleans up under the claim on its id: while another holds it, its folder and mark stay', async (t) => {
  // Before, the clean-up ran outside the claim: a run of the same request (sent again after a TIMEOUT) that
  // took the id over in that moment could have its fresh folder, and its QEMU, removed under it.
  const options = await setUp(t);
  const go = join(options.stateDir, '..', 'let-qemu-fail');
  const qemuBinary = join(options.stateDir, '..', 'qemu-failing-on-cue');
  await writeFile(qemuBinary, `#!/bin/sh\nwhile [ ! -e '${go}' ]; do sleep 0.02; done\necho "no QEMU in this test" >&2\nexit 1\n`, { mode: 0o755 });
  const id = vmIdForRequest('h1', 'req-1');
  const paths = vmPaths(options.stateDir, id);
  const attempt = run({ ...options, qemuBinary }, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
  const state = settledYet(attempt.result);
  await until(() => attempt.stages.some((s) => s.stage === 'starting'), 10_000, 'the create reaches "starting"');
  const claim = await holdClaim(options.stateDir, id, 'create-vm');
  await writeFile(go, '');
  await new Promise((resolve) => setTimeout(resolve, 400));
  assert.equal(state.settled, false, 'the clean-up waits for the claim');
  assert.equal(await exists(paths.creating), true, 'the mark stays while another holds the claim');
  await rm(claim);
  await assert.rejects(attempt.result, { code: 'QEMU_FAILED' });
  assert.equal(await exists(paths.dir), false, 'cleaned up once the claim was its own');
  assert.deepEqual(await readdir(join(options.stateDir, '.claims')), []);
});

test("request id — the `creating` mark holds for the create's deadline plus its pool's cancel grace (core API 1.12), plus 10 s", async (t) => {
  // Before, it held for the deadline plus 30 s, whatever the pool's cancelGraceMs (up to 600 s): a create
  // cancelled and still at work in that grace outlived its mark, and could be taken for a leftover.
  const options = await setUp(t);
  const go = join(options.stateDir, '..', 'let-qemu-fail');
  const qemuBinary = join(options.stateDir, '..', 'qemu-failing-on-cue');
  await writeFile(qemuBinary, `#!/bin/sh\nwhile [ ! -e '${go}' ]; do sleep 0.02; done\nexit 1\n`, { mode: 0o755 });
  const paths = vmPaths(options.stateDir, vmIdForRequest('h1', 'req-1'));
  const deadline = Date.now() + 60_000;
  const attempt = run({ ...options, qemuBinary }, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 }, deadline, 120_000);
  await until(() => attempt.stages.some((s) => s.stage === 'starting'), 10_000, 'the create reaches "starting"');
  const mark = JSON.parse(await readFile(paths.creating, 'utf8')) as { until: number };
  await writeFile(go, '');
  await assert.rejects(attempt.result, { code: 'QEMU_FAILED' });
  assert.equal(mark.until, deadline + 120_000 + 10_000);
});

test('claim — a failed create ends its QEMU before it waits for the claim: held throughout, the QEMU is gone and the mark and folder stay', async (t) => {
  // Before, QEMU was ended under the claim: while another held it (or once the cancel grace ended the thread
  // during the wait), the QEMU a failed start had left ran on.
  const options = await setUp(t);
  const qemuBinary = join(options.stateDir, '..', 'qemu-leaving-a-process');
  const go = join(options.stateDir, '..', 'let-qemu-go-on');
  // A QEMU that daemonizes and then fails, on cue: a process named as the VM's QEMU, its pid in the pidfile,
  // exit 1. perl sleeps in its own process (a shell would leave a child `sleep` behind when killed).
  await writeFile(
    qemuBinary,
    `#!/bin/sh
while [ ! -e '${go}' ]; do sleep 0.02; done
prev=; for a in "$@"; do case "$prev" in -name) name=$a;; -pidfile) pidfile=$a;; esac; prev=$a; done
perl -e 'sleep 60' -- -name "$name" -pidfile "$pidfile" </dev/null >/dev/null 2>&1 &
echo $! > "$pidfile"
echo "failed after daemonizing" >&2
exit 1
`,
    { mode: 0o755 },
  );
  const id = vmIdForRequest('h1', 'req-1');
  const paths = vmPaths(options.stateDir, id);
  let standIn: number | undefined;
  t.after(() => {
    if (standIn !== undefined) spawnSync('kill', ['-9', String(standIn)]);
  });
  const attempt = run({ ...options, qemuBinary }, 'req-1', { image: 'tiny', memory: 128, vcpus: 1 });
  await until(() => attempt.stages.some((s) => s.stage === 'starting'), 10_000, 'the create reaches "starting"');
  await holdClaim(options.stateDir, id, 'sweeper', { n: 5 });
  await writeFile(go, '');
  await until(async () => exists(paths.pidfile), 10_000, 'the stand-in QEMU writes its pidfile');
  standIn = Number((await readFile(paths.pidfile, 'utf8')).trim());
  await assert.rejects(attempt.result, { code: 'QEMU_FAILED' });
  // Ended, not necessarily reaped: its parent, the script, has exited, so init reaps it in its own time.
  assert.equal(processAlive(standIn), false, 'the QEMU left by the failed start was ended');
  assert.equal(await exists(paths.creating), true, 'mark and folder stay while another holds the claim');
});
