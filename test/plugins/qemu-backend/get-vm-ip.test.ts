/**
 * get-vm-ip on a host without an ip-discovery plugin: without a wait it answers with no address and a hint;
 * a wait is refused at once (it could only run out). The handler runs in-process with a fake context; a
 * node process named as the VM's QEMU stands in for a running VM.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import type { HandlerContext } from '../../../core/plugin-api.ts';
import getVmIp from '../../../plugins/qemu-backend/handlers/get-vm-ip.ts';
import { qemuOptionsSchema, type QemuOptions } from '../../../plugins/qemu-backend/options.ts';
import { qemuProcessName } from '../../../plugins/qemu-backend/processes.ts';
import { getVmIpPayload } from '../../../plugins/qemu-backend/schemas.ts';
import { vmPaths, writeRecord } from '../../../plugins/qemu-backend/state.ts';
import { tempDir } from '../../helpers.ts';

test('get-vm-ip — no ip-discovery plugin: an answer with a hint; a wait is IP_NOT_FOUND at once (noDiscovery), not "no address" and success', { timeout: 30_000 }, async (t) => {
  // Before, `vm ip --wait` and `vm start --wait-ip` returned at once with no address and exit 0.
  const dir = await tempDir(t);
  const options = qemuOptionsSchema.parse({ imagesDir: join(dir, 'images'), stateDir: join(dir, 'qemu') });
  const id = 'h1.abcdefgh';
  const paths = vmPaths(options.stateDir, id);
  await mkdir(paths.dir, { recursive: true });
  const at = '2026-11-29T06:00:00.000Z';
  await writeRecord(options.stateDir, { v: 1, id, host: 'h1', image: 'tiny', imageKind: 'kernel', memoryMiB: 128, vcpus: 1, mac: '02:00:00:00:00:01', network: { mode: 'user' }, autostart: false, desired: 'running', createdAt: at, updatedAt: at });
  const standIn = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)', '--', '-name', qemuProcessName(id), '-pidfile', paths.pidfile], { stdio: 'ignore' });
  t.after(() => standIn.kill('SIGKILL'));
  await writeFile(paths.pidfile, `${standIn.pid}\n`);
  const ctx = {
    options,
    host: { id: 'h1', agentVersion: 'test', startedAt: Date.now() },
    message: { id: 'ip-1', type: 'get-vm-ip', deadline: Date.now() + 20_000, cancelGraceMs: 1_000 },
    log: { trace() {}, debug() {}, info() {}, warn() {}, error() {} },
    signal: new AbortController().signal,
    progress() {},
    plugins: [],
    providers: {},
    inFlight: {},
  } satisfies HandlerContext<QemuOptions>;
  const ask = async (payload: Record<string, unknown>) => getVmIp(getVmIpPayload.parse({ vm: id, ...payload }), ctx);

  assert.deepEqual(await ask({}), { vm: id, mac: '02:00:00:00:00:01', addresses: [], strategies: [], hint: 'this host has no ip-discovery plugin configured' });
  // Refused, not answered: before, the same call resolved with no address (a wait could only run out).
  await assert.rejects(ask({ wait: true, timeoutMs: 10_000 }), (error: { code?: string; message: string; details?: unknown }) => {
    assert.equal(error.code, 'IP_NOT_FOUND');
    assert.equal(error.message, `cannot wait for an address of ${id}: host h1 has no ip-discovery plugin configured`);
    assert.deepEqual(error.details, { vm: id, noDiscovery: true });
    return true;
  });
});
