/** call --payload: a payload too deeply nested to be sent is a usage error, found before anything is sent. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { cliBin, runCli, tempDir } from '../../helpers.ts';

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

test('call — a --payload-file that never ends (/dev/zero) is refused past the largest message any config allows; a pipe is read like a file', async (t) => {
  // Before: it was read whole, until memory ran out and V8 gave up with "cannot read /dev/zero: Invalid string length".
  const dir = await tempDir(t);
  const endless = await runCli(['call', 'test.echo', '--payload-file', '/dev/zero', '--socket', join(dir, 'nobody.sock')], { timeoutMs: 60_000 });
  assert.equal(endless.code, 2, endless.stderr);
  assert.match(endless.stderr, /^error \[USAGE\]: --payload-file \/dev\/zero is larger than 64 MiB, more than any message may be \(limits\.maxMessageBytes is at most that\)/);
  const missing = await runCli(['call', 'test.echo', '--payload-file', join(dir, 'none.json'), '--socket', join(dir, 'nobody.sock')]);
  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /^error \[USAGE\]: cannot read .*none\.json: ENOENT/);
  // A pipe (as `--payload-file <(…)` gives): read to its end, then sent; here nobody listens on the socket.
  const piped = spawnSync('bash', ['-c', `"$0" "$1" call test.echo --payload-file <(printf '{"value":"piped"}') --socket "$2"`, process.execPath, cliBin, join(dir, 'nobody.sock')], { encoding: 'utf8' });
  assert.match(piped.stderr, /error \[AGENT_UNREACHABLE\]/, 'the payload was read and the call went on to connect');
});
