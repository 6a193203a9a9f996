/**
 * What `cloudlet vm …` prints when a real host with qemu-backend refuses a command: the flag and the value
 * that were wrong, units, and a hint that fits the refusal (not the generic one of its code).
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { runCli, startAgent, tempDir, writeConfig } from '../../helpers.ts';

test('vm cli — refusals name the flag and value, the unit, and the way out', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t, 'cloudlet-cli-refusals-');
  // A kernel image is two files; nothing boots here (every create below is refused before QEMU).
  await mkdir(join(dir, 'images', 'tiny'), { recursive: true });
  for (const file of ['vmlinuz', 'initrd.img']) await writeFile(join(dir, 'images', 'tiny', file), '');
  const options = { imagesDir: join(dir, 'images'), stateDir: join(dir, 'state'), network: { mode: 'user' }, limits: { maxMemoryMiB: 1024, maxVcpus: 2 } };
  const { socketPath } = await startAgent(t, { plugins: [{ use: 'qemu-backend', options }] });
  const config = await writeConfig(dir, 'client.yaml', `transport:\n  kind: local\n  socket: ${socketPath}\n`);
  const vm = (...args: string[]) => runCli(['vm', ...args, '--config', config]);

  // Before: "invalid payload for "create-vm": payload.name: letters, …", not saying which value.
  const badName = await vm('create', '--image', 'tiny', '--name', 'my vm!');
  assert.equal(badName.code, 1, badName.stderr);
  assert.match(badName.stderr, /^error \[INVALID_PAYLOAD\] from test-host: the host refused the request: --name "my vm!": letters, digits, "\.", "_", "-", starting with a letter or digit/m);
  assert.match(badName.stderr, /\nhint: change the value of the flag named; "cloudlet vm create --help" lists the flags\n/);

  // Before: "asked for 4096 MiB and 3" (3 what?).
  const big = await vm('create', '--image', 'tiny', '--memory', '4096', '--vcpus', '3');
  assert.equal(big.code, 1, big.stderr);
  assert.match(big.stderr, /may have at most 1024 MiB and 2 vCPUs; asked for 4096 MiB and 3 vCPUs\n/);

  // Before: the NO_CAPACITY hint, "delete VMs, ask for less memory …", which cannot help.
  const bridged = await vm('create', '--image', 'tiny', '--network', 'bridge');
  assert.equal(bridged.code, 1, bridged.stderr);
  assert.match(bridged.stderr, /host test-host has no bridge configured \(network\.mode is "user"\), so it cannot give a VM a bridged network/);
  assert.match(bridged.stderr, /\nhint: leave out the bridged network \(its VMs get network mode "user"\), or send the create to a host whose qemu-backend has network\.mode "bridge"\n/);

  // Before: "send the command to its owner", which the local socket cannot do.
  const elsewhere = await vm('stop', 'other.abcdefgh');
  assert.equal(elsewhere.code, 1, elsewhere.stderr);
  assert.match(elsewhere.stderr, /VM "other\.abcdefgh" belongs to host "other", not to "test-host"\n/);
  assert.match(elsewhere.stderr, /\nhint: the VM id names host "other": over RabbitMQ, leave out --host and the command goes there; an agent's local socket reaches only its own host's VMs\n/);
});
