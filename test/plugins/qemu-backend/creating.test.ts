/**
 * A VM folder without vm.json: a create at work (its `creating` mark names this agent process) or what a
 * create that died left behind. Files in a temp folder only.
 */
import assert from 'node:assert/strict';
import { access, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import { vmPaths } from '../../../plugins/qemu-backend/state.ts';
import { isBeingCreated, removeLeftover, requireRecord } from '../../../plugins/qemu-backend/vm-ops.ts';
import { tempDir } from '../../helpers.ts';

test('creating — only a fresh mark of this agent process means a create at work; anything else is a leftover', async (t) => {
  const dir = await tempDir(t);
  const options = qemuOptionsSchema.parse({ imagesDir: join(dir, 'images'), stateDir: join(dir, 'qemu'), ipBinary: join(dir, 'no-ip') });
  const folder = async (id: string, mark?: unknown) => {
    await mkdir(vmPaths(options.stateDir, id).dir, { recursive: true });
    await writeFile(join(vmPaths(options.stateDir, id).dir, 'disk.qcow2'), 'overlay');
    if (mark !== undefined) await writeFile(vmPaths(options.stateDir, id).creating, typeof mark === 'string' ? mark : JSON.stringify(mark));
  };
  const agent = { id: 'h1', startedAt: Date.now() - 60_000 };
  const soon = Date.now() + 60_000;
  await folder('h1.atworkxx', { pid: process.pid, agentStartedAt: agent.startedAt, until: soon });
  await folder('h1.restartx', { pid: process.pid + 1_000_000, agentStartedAt: agent.startedAt, until: soon }); // the agent that wrote it is gone
  await folder('h1.samepidx', { pid: process.pid, agentStartedAt: agent.startedAt - 5_000, until: soon }); // a restart that got the same pid (PID 1 in a container)
  await folder('h1.ancientx', { pid: process.pid, agentStartedAt: agent.startedAt, until: Date.now() - 1 }); // its create's deadline has passed
  await folder('h1.tornmark', '{"pid":');
  await folder('h1.nomarkxx');

  assert.equal(await isBeingCreated(options, 'h1.atworkxx', agent), true);
  await assert.rejects(requireRecord(options, 'h1.atworkxx', agent), { code: 'VM_NOT_READY' });
  for (const id of ['h1.restartx', 'h1.samepidx', 'h1.ancientx', 'h1.tornmark', 'h1.nomarkxx', 'h1.missingx']) {
    assert.equal(await isBeingCreated(options, id, agent), false, id);
    await assert.rejects(requireRecord(options, id, agent), { code: 'VM_NOT_FOUND' }, id);
  }
  // delete-vm's path for a leftover: the folder goes (its QEMU and tap, when there are any).
  assert.equal(await removeLeftover(options, 'h1.restartx'), true);
  await assert.rejects(access(vmPaths(options.stateDir, 'h1.restartx').dir));
  assert.equal(await removeLeftover(options, 'h1.missingx'), false);
});
