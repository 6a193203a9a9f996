/** `call --wait-ip`: refused before sending when no VM can be named; the first reply is never lost. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCli, startAgent, tempDir, writeConfig } from '../../helpers.ts';

const vmStub = fileURLToPath(new URL('./fixtures/vm-stub/index.ts', import.meta.url));

async function stubAgent(t: TestContext): Promise<string> {
  const { socketPath } = await startAgent(t, { plugins: [{ use: vmStub }] });
  return writeConfig(await tempDir(t), 'client.yaml', `transport:\n  kind: local\n  socket: ${socketPath}\n`);
}

test('call --wait-ip — a message that cannot name a VM is refused with USAGE before anything is sent', async (t) => {
  // Before, host-info was sent first and only then refused as USAGE (which promises nothing was sent):
  // with no agent there, the send failed with AGENT_UNREACHABLE (exit 4) instead.
  const dir = await tempDir(t);
  const config = await writeConfig(dir, 'client.yaml', `transport:\n  kind: local\n  socket: ${join(dir, 'nobody.sock')}\n`);
  const { code, stderr } = await runCli(['call', 'host-info', '--wait-ip', '--config', config]);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /^error \[USAGE\]: --wait-ip needs a payload naming the VM/);
});

test('call --wait-ip — when the wait fails, the create-vm result is still printed, and --json keeps both replies', async (t) => {
  // Before, the get-vm-ip error envelope replaced the successful create-vm reply: scripts never saw the VM id.
  const config = await stubAgent(t);
  const payload = JSON.stringify({ image: 'tiny' });
  const json = await runCli(['call', 'create-vm', '--payload', payload, '--wait-ip', '--config', config, '--json']);
  assert.equal(json.code, 1, json.stderr);
  const printed = JSON.parse(json.stdout) as { ok: boolean; type: string; result: { id: string }; waitIp: { ok: boolean; host: string; error: { code: string } } };
  assert.equal(printed.ok, true);
  assert.equal(printed.result.id, 'test-host.abcdefgh');
  assert.equal(printed.waitIp.ok, false);
  assert.equal(printed.waitIp.host, 'test-host');
  assert.equal(printed.waitIp.error.code, 'IP_NOT_FOUND');

  const human = await runCli(['call', 'create-vm', '--payload', payload, '--wait-ip', '--config', config]);
  assert.equal(human.code, 1, human.stderr);
  assert.equal((JSON.parse(human.stdout) as { id: string }).id, 'test-host.abcdefgh');
  assert.match(human.stderr, /error \[IP_NOT_FOUND\] from test-host/);
});

test('call --wait-ip — a result that names no VM after all is not a USAGE error, and the reply stays visible', async (t) => {
  const config = await stubAgent(t);
  const { code, stdout, stderr } = await runCli(['call', 'create-vm', '--payload', JSON.stringify({ image: 'no-id' }), '--wait-ip', '--config', config]);
  assert.equal(code, 1, stderr);
  assert.deepEqual(JSON.parse(stdout), { state: 'running' });
  assert.match(stderr, /^error \[INVALID_RESULT\]: create-vm's result from test-host names no VM/m);
  assert.doesNotMatch(stderr, /USAGE/);
});
