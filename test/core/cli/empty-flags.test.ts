/** A flag given an empty value is refused by name, never replaced by a default or ignored. */
import assert from 'node:assert/strict';
import { access, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { runCli, tempDir } from '../../helpers.ts';

test('empty flag values — --config "", --socket "", --state-dir "", --images-dir "" are refused with USAGE naming the flag', async (t) => {
  // Before, --config "" fell back to $CLOUDLET_CONFIG, --socket "" was ignored, and
  // init --state-dir "" --images-dir "" wrote the current directory into the config.
  const dir = await tempDir(t);
  const envConfig = join(dir, 'env.yaml');
  await writeFile(envConfig, `transport:\n  kind: local\n  socket: ${join(dir, 'agent.sock')}\n`);
  const written = join(dir, 'init.yaml');
  for (const [args, flag] of [
    [['plugins', '--config', ''], '--config'],
    [['config', 'check', envConfig, '--config='], '--config'],
    [['hosts', '--config', envConfig, '--socket', ''], '--socket'],
    [['init', '--output', written, '--state-dir', ''], '--state-dir'],
    [['init', '--output', written, '--images-dir', ''], '--images-dir'],
  ] as const) {
    const { code, stderr } = await runCli([...args], { env: { CLOUDLET_CONFIG: envConfig } });
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
    assert.match(stderr, new RegExp(`^error \\[USAGE\\]: ${flag} needs a value, found an empty one`), stderr);
  }
  await assert.rejects(access(written), 'init wrote nothing');
});
