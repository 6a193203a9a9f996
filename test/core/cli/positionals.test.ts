/** Commands that take no arguments refuse them, rather than run with another config than the one named. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import test from 'node:test';
import { runCli, tempDir } from '../../helpers.ts';

test('agent, plugins, doctor and hosts — a positional argument is refused with USAGE pointing at --config', async (t) => {
  // Before, "cloudlet agent other.yaml" ignored other.yaml and ran whatever config --config or the defaults named.
  const missing = join(await tempDir(t), 'missing.yaml');
  for (const command of ['agent', 'plugins', 'doctor', 'hosts']) {
    const { code, stdout, stderr } = await runCli([command, 'other.yaml', '--config', missing]);
    assert.equal(code, 2, `${command}: ${stderr}`);
    assert.equal(stdout, '');
    assert.match(stderr, new RegExp(`^error \\[USAGE\\]: ${command} takes no positional arguments, found "other\\.yaml"; give the config with --config FILE`), stderr);
  }
});
