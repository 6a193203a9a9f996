/** call --payload: a payload too deeply nested to be sent is a usage error, found before anything is sent. */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { runCli, tempDir } from '../../helpers.ts';

test('call — a --payload-file nested too deeply to send is refused with USAGE before connecting, not INTERNAL', async (t) => {
  // Before: JSON.parse read it, and the send's JSON.stringify overflowed the stack: "error [INTERNAL]: Maximum
  // call stack size exceeded", exit 70 ("a bug: please report it").
  const dir = await tempDir(t);
  const file = join(dir, 'deep.json');
  await writeFile(file, `${'['.repeat(100_000)}${']'.repeat(100_000)}`);
  const { code, stderr } = await runCli(['call', 'test.echo', '--payload-file', file, '--socket', join(dir, 'nobody.sock')]);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /^error \[USAGE\]: --payload-file .* nests too deeply to be sent as JSON/);
});
