/**
 * `cloudlet config check` finds its file as every other command finds its config: FILE, --config FILE, or
 * the config the agent would use. Before, --config was taken and ignored: "config check --config FILE"
 * answered "expected exactly one FILE", and "config check a.yaml --config b.yaml" checked a.yaml alone.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { runCli, tempDir } from '../../helpers.ts';

async function configs(dir: string) {
  const good = join(dir, 'good.yaml');
  const other = join(dir, 'other.yaml');
  const bad = join(dir, 'bad.yaml');
  await writeFile(good, `host:\n  id: good-host\ntransport:\n  kind: local\n  socket: ${join(dir, 'good.sock')}\n`);
  await writeFile(other, `host:\n  id: other-host\ntransport:\n  kind: local\n  socket: ${join(dir, 'other.sock')}\n`);
  await writeFile(bad, 'host:\n  id: "not a host id!"\n');
  return { good, other, bad };
}

test('config check — FILE or --config FILE; both only when they name the same file', async (t) => {
  const dir = await tempDir(t);
  const { good, other, bad } = await configs(dir);
  const byFlag = await runCli(['config', 'check', '--config', good]);
  assert.equal(byFlag.code, 0, byFlag.stderr);
  assert.match(byFlag.stdout, /good\.yaml: ok — host "good-host"/);
  const byFlagBad = await runCli(['config', 'check', '--config', bad]);
  assert.equal(byFlagBad.code, 3, 'the file --config names is the one checked');
  assert.match(byFlagBad.stdout, /bad\.yaml: 1 problem/);
  const same = await runCli(['config', 'check', good, '--config', join(dir, '.', 'good.yaml')]);
  assert.equal(same.code, 0, same.stderr);
  const two = await runCli(['config', 'check', good, '--config', other]);
  assert.equal(two.code, 2);
  assert.equal(two.stdout, '');
  assert.match(two.stderr, /^error \[USAGE\]: config check was given two files, ".*good\.yaml" and --config ".*other\.yaml"; give one/);
  const many = await runCli(['config', 'check', good, other]);
  assert.equal(many.code, 2);
  assert.match(many.stderr, /^error \[USAGE\]: config check takes one FILE, found 2: ".*good\.yaml" ".*other\.yaml"/);
});

test('config check — without FILE, the config the agent would use: CLOUDLET_CONFIG, then ./cloudlet.yaml; none is a USAGE error, never the defaults checked', async (t) => {
  const dir = await tempDir(t);
  const { good, bad } = await configs(dir);
  const env = await runCli(['config', 'check'], { env: { CLOUDLET_CONFIG: bad } });
  assert.equal(env.code, 3, env.stderr);
  assert.match(env.stdout, /bad\.yaml: 1 problem/);
  const missing = await runCli(['config', 'check'], { env: { CLOUDLET_CONFIG: join(dir, 'missing.yaml') } });
  assert.match(missing.stderr, /^error \[CONFIG_NOT_FOUND\]: config file .*missing\.yaml does not exist/);

  const cwd = join(dir, 'work');
  await mkdir(cwd);
  const none = await runCli(['config', 'check'], { cwd, env: { CLOUDLET_CONFIG: '' } });
  if (existsSync('/etc/cloudlet/cloudlet.yaml')) {
    // This machine has a host config: that is the one checked (its outcome is its own business).
    assert.match(`${none.stdout}${none.stderr}`, /\/etc\/cloudlet\/cloudlet\.yaml/);
  } else {
    assert.equal(none.code, 2, none.stderr);
    assert.equal(none.stdout, '');
    assert.match(none.stderr, new RegExp(`^error \\[USAGE\\]: no config to check: give FILE, or set CLOUDLET_CONFIG; neither ${join(cwd, 'cloudlet.yaml')} nor /etc/cloudlet/cloudlet.yaml exists`));
  }
  await writeFile(join(cwd, 'cloudlet.yaml'), await readFile(good, 'utf8'));
  const local = await runCli(['config', 'check'], { cwd, env: { CLOUDLET_CONFIG: '' } });
  assert.equal(local.code, 0, local.stderr);
  assert.match(local.stdout, /cloudlet\.yaml: ok — host "good-host"/);
});
