/** `cloudlet --help`: every form of every command, as its own --help gives it. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { runCli } from '../../helpers.ts';

test('help — the overview lists every form of every command, wrapped lines included (keys show, init --lease-file)', async () => {
  // Before, only each usage's first line: "cloudlet keys show" and half of init's and vm create's flags were missing.
  const help = await runCli(['--help']);
  assert.equal(help.code, 0, help.stderr);
  for (const words of [['keys'], ['init'], ['vm', 'create'], ['call'], ['vm', 'list']]) {
    const own = await runCli([...words, '--help']);
    const forms = own.stdout.split('\n');
    const synopsis = forms.slice(0, forms.findIndex((line) => /^ {2}\S/.test(line)));
    assert.ok(synopsis.length > 0, own.stdout);
    for (const line of synopsis) assert.ok(help.stdout.includes(`${line}\n`), `${words.join(' ')}: "${line}" is not in --help:\n${help.stdout}`);
  }
  assert.match(help.stdout, /^cloudlet keys show FILE \[--json\]$/m);
});
