/**
 * A real agent with qemu-backend whose state folder holds vm.json files that are not records of their VM
 * (what a hand edit, a torn write or a restored backup leaves). Before: `null` kept the agent from
 * starting, `{}` failed list-vms for the whole host, and a tampered field went into QEMU's argv.
 */
import assert from 'node:assert/strict';
import { access, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { makeRequest, type ReplyEnvelope } from '../../../core/envelope.ts';
import { vmPaths, writeRecord, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import { runCli, startAgent, tempDir, writeConfig } from '../../helpers.ts';

const good: VmRecord = {
  v: 1, id: 'test-host.goodgood', host: 'test-host', image: 'tiny', imageKind: 'kernel', memoryMiB: 64, vcpus: 1, mac: '02:aa:bb:cc:dd:01',
  network: { mode: 'none' }, autostart: false, desired: 'stopped', createdAt: '2030-01-01T00:00:00.000Z', updatedAt: '',
};

test('qemu-backend — unusable vm.json files: the agent starts, list-vms names them, commands refuse them, delete-vm removes them', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t, 'cloudlet-bad-record-');
  const stateDir = join(dir, 'state');
  await mkdir(join(dir, 'images'));
  await writeRecord(stateDir, good);
  const bad = {
    'test-host.nullnull': 'null',
    // With autostart, reconcile would have started QEMU with this MAC option on its command line.
    'test-host.injected': JSON.stringify({ ...good, id: 'test-host.injected', autostart: true, mac: '02:aa:bb:cc:dd:02,romfile=/etc/shadow' }),
  };
  for (const [id, text] of Object.entries(bad)) {
    await mkdir(vmPaths(stateDir, id).dir);
    await writeFile(vmPaths(stateDir, id).record, text);
  }
  const { client, socketPath } = await startAgent(t, { plugins: [{ use: 'qemu-backend', options: { imagesDir: join(dir, 'images'), stateDir } }] });
  const ask = (type: string, payload: unknown): Promise<ReplyEnvelope> => client.request(makeRequest({ type, payload, deadline: Date.now() + 30_000 }));

  const list = await ask('list-vms', {});
  assert.ok(list.ok, JSON.stringify(list.error));
  const listed = list.result as { vms: { id: string }[]; unusable: { vm: string; problem: string }[] };
  assert.deepEqual(listed.vms.map((vm) => vm.id), [good.id]);
  assert.deepEqual(listed.unusable.map((u) => u.vm).sort(), Object.keys(bad).sort());
  assert.match(listed.unusable.find((u) => u.vm === 'test-host.injected')?.problem ?? '', /^mac: /);

  // The operator's list says so too (before, such a VM was simply not there).
  const clientConfig = await writeConfig(dir, 'client.yaml', `transport:\n  kind: local\n  socket: ${socketPath}\n`);
  const human = await runCli(['vm', 'list', '--config', clientConfig]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /test-host\.goodgood/);
  assert.match(human.stderr, /warning: test-host: VM test-host\.injected is not listed: its record .*vm\.json cannot be used \(mac: .*\); "cloudlet vm delete test-host\.injected" removes it/);
  assert.match(human.stderr, /warning: test-host: VM test-host\.nullnull is not listed/);
  const json = await runCli(['vm', 'list', '--config', clientConfig, '--json']);
  assert.deepEqual((JSON.parse(json.stdout) as { unusable: { host: string; vm: string }[] }).unusable.map((u) => `${u.host} ${u.vm}`).sort(), ['test-host test-host.injected', 'test-host test-host.nullnull']);

  for (const type of ['get-vm', 'start-vm']) {
    const refused = await ask(type, { vm: 'test-host.injected' });
    assert.equal(refused.error?.code, 'VM_RECORD_INVALID', `${type}: ${JSON.stringify(refused.error)}`);
    assert.match(refused.error?.message ?? '', /^the record of test-host\.injected \(.*vm\.json\) cannot be used: mac: /);
  }
  for (const id of Object.keys(bad)) {
    const deleted = await ask('delete-vm', { vm: id });
    assert.deepEqual([deleted.ok, (deleted.result as { deleted?: boolean } | undefined)?.deleted], [true, true], JSON.stringify(deleted));
    await assert.rejects(access(vmPaths(stateDir, id).dir), 'the folder is gone');
  }
  assert.deepEqual(((await ask('list-vms', {})).result as { unusable?: unknown }).unusable, undefined);
});
