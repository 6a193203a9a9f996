/** init, install-service and keys generate: a folder that cannot be made is named, not an internal error. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { cliBin, runCli, tempDir } from '../../helpers.ts';

test('output folders — a path through a file is refused with USAGE naming the file, for init, install-service and keys', async (t) => {
  // Before, mkdir's ENOTDIR/EEXIST escaped as INTERNAL (exit 70, "a bug: please report it").
  const dir = await tempDir(t);
  const file = join(dir, 'plain-file');
  await writeFile(file, 'not a folder\n');
  for (const [args, flag] of [
    [['init', '--output', join(file, 'x.yaml')], '--output'],
    [['init', '--output', join(file, 'deeper', 'x.yaml')], '--output'],
    [['install-service', '--config', join(dir, 'none.yaml'), '--output', join(file, 'x.service')], '--output'],
    [['keys', 'generate', '--name', 'k1', '--out', join(file, 'keys')], '--out'],
    [['keys', 'generate', '--name', 'k1', '--out', file], '--out'],
  ] as const) {
    const { code, stderr } = await runCli([...args]);
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
    assert.ok(stderr.startsWith(`error [USAGE]: cannot create the folder for ${flag} `), stderr);
    assert.ok(stderr.includes(`${file} is a file, not a folder`), stderr);
  }
});

test('output folders — a folder that cannot be made under /proc is refused, not waited on for ever', { timeout: 30_000 }, async () => {
  // Before: `cloudlet init --output /proc/self/x/y.yaml` hung; Node 20's recursive mkdir never returns there.
  const { code, stderr } = await runCli(['init', '--output', '/proc/self/x/y.yaml']);
  assert.equal(code, 2, stderr);
  assert.ok(stderr.startsWith('error [USAGE]: cannot create the folder for --output '), stderr);
});

test('output folders — a default path that cannot be made says it is the default and which flag chooses another', async () => {
  // Before: "cannot create the folder for --output /etc/cloudlet/cloudlet.yaml" when no --output was given.
  // /etc is a read-only tmpfs in a mount namespace of the command's own (root, as in CI; gone when it exits).
  for (const [command, file] of [
    ['init', '/etc/cloudlet/cloudlet.yaml'],
    ['install-service', '/etc/systemd/system/cloudlet.service'],
  ] as const) {
    const args = ['-m', 'sh', '-c', 'mount -t tmpfs -o ro,size=1m tmpfs /etc && exec "$@"', 'sh', process.execPath, cliBin, command];
    if (command === 'install-service') args.push('--config', '/nonexistent/cloudlet.yaml');
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile('unshare', args, { timeout: 20_000 }, (error, _stdout, stderr) => resolve({ code: error ? ((error as { code?: number }).code ?? null) : 0, stderr }));
    });
    assert.equal(code, 2, stderr);
    assert.match(stderr, new RegExp(`^error \\[USAGE\\]: cannot create the folder for ${file.replaceAll('.', '\\.')} \\(the default; choose another with --output\\): .*EROFS`, 'm'));
  }
});
