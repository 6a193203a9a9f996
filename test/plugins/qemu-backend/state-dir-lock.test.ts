/**
 * One agent per qemu-backend stateDir. Before, two agents with different sockets (or host ids) could share
 * one: the second re-attached the first's VMs, and its start-up clean-up could end a create the first was
 * running. Now the second is refused before its start hook touches the folder.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { readRecord, writeRecord, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { runCli, spawnAgent, startAgent, tempDir, writeConfig } from '../../helpers.ts';

const record: VmRecord = {
  v: 1, id: 'first.runningx', host: 'first', image: 'tiny', imageKind: 'kernel', memoryMiB: 64, vcpus: 1, mac: '02:aa:bb:cc:dd:01',
  network: { mode: 'none' }, autostart: false, desired: 'running', createdAt: '2030-01-01T00:00:00.000Z', updatedAt: '',
};

test('qemu-backend — a second agent on the same stateDir is refused (FOLDER_IN_USE) before it touches it; it starts once the first has stopped', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t, 'cloudlet-state-lock-');
  const stateDir = join(dir, 'state');
  await mkdir(join(dir, 'images'));
  const plugins = [{ use: 'qemu-backend', options: { imagesDir: join(dir, 'images'), stateDir } }];
  const first = await startAgent(t, { host: { id: 'first' }, plugins });
  // Written after the first agent's start-up: a second agent's reconcile would mark it stopped (no QEMU runs).
  await writeRecord(stateDir, record);

  await assert.rejects(startAgent(t, { host: { id: 'second' }, plugins }), (error: { code?: string; message: string; details?: Record<string, unknown> }) => {
    assert.equal(error.code, 'FOLDER_IN_USE');
    assert.match(error.message, /in use by the agent of host "first" \(process \d+, plugin "qemu-backend", running\); two agents must not share it: stop the other agent, or give each its own stateDir \(plugin "qemu-backend"\)$/);
    assert.equal(error.details?.holderHost, 'first');
    return true;
  });
  assert.equal((await readRecord(stateDir, record.id))?.desired, 'running', 'the refused agent left the folder alone');

  await first.agent.stop('test');
  await startAgent(t, { host: { id: 'second' }, plugins });
  assert.equal((await readRecord(stateDir, record.id))?.desired, 'stopped', 'the agent that took over reconciled the folder');
});

test('qemu-backend — `cloudlet agent` on a stateDir another agent runs on exits 1 and says FOLDER_IN_USE', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t, 'cloudlet-state-lock-');
  await mkdir(join(dir, 'images'));
  const config = (host: string) =>
    [
      `host:\n  id: ${host}`,
      `transport:\n  kind: local\n  socket: ${join(dir, `${host}.sock`)}`,
      `plugins:\n  - use: qemu-backend\n    options:\n      imagesDir: ${join(dir, 'images')}\n      stateDir: ${join(dir, 'state')}`,
      '',
    ].join('\n');
  const first = await spawnAgent(t, await writeConfig(dir, 'first.yaml', config('first')));
  const second = await runCli(['agent', '--config', await writeConfig(dir, 'second.yaml', config('second'))], { env: { CLOUDLET_LOG_FORMAT: 'json' } });
  assert.equal(second.code, 1, second.stdout + second.stderr);
  const fatal = (second.stdout + second.stderr).split('\n').find((line) => line.includes('"FOLDER_IN_USE"'));
  assert.ok(fatal, second.stdout + second.stderr);
  assert.match(fatal, new RegExp(`in use by the agent of host \\\\"first\\\\" \\(process ${first.child.pid}, plugin \\\\"qemu-backend\\\\", running\\)`));
  assert.equal(first.child.exitCode, null, 'the first agent runs on');
  assert.notEqual(first.child.pid, process.pid);
});
