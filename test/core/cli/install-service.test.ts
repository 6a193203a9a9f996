/** install-service: every value that goes into the unit (run as root) is one line of it, or refused. */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { renderUnit } from '../../../core/cli/commands/install-service.ts';
import { runCli, tempDir } from '../../helpers.ts';

const TEMPLATE = '[Service]\nExecStart=/usr/bin/env cloudlet agent\n# cloudlet-paths: here\nProtectHome=yes\n';

test('install-service — a config value with a newline is refused (exit 3, naming the setting), not written into the unit', async (t) => {
  // Before, quote() kept the newline: state.dir "/srv/cl\nExecStartPre=…" added an ExecStartPre= line, run as root.
  const dir = await tempDir(t);
  for (const [setting, yaml] of [
    ['state.dir', 'state:\n  dir: "/srv/cl\\nExecStartPre=/bin/touch /tmp/pwned"\n'],
    ['transport.socket', 'transport:\n  kind: local\n  socket: "/srv/s\\rExecStartPre=/bin/touch /tmp/pwned/agent.sock"\n'],
  ] as const) {
    const config = join(dir, `${setting}.yaml`);
    await writeFile(config, yaml);
    const { code, stdout, stderr } = await runCli(['install-service', '--config', config, '--print']);
    assert.equal(code, 3, stderr);
    assert.doesNotMatch(stdout, /ExecStartPre/);
    assert.match(stderr, new RegExp(`CONFIG_INVALID.*${setting.replace('.', '\\.')}`, 's'));
    assert.match(stderr, /control character/);
    assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  }
});

test('install-service — a --config path with a newline is refused with USAGE naming the flag', async (t) => {
  const dir = await tempDir(t);
  const odd = join(dir, 'x\nExecStartPre=/bin/touch /tmp/pwned');
  await mkdir(dir, { recursive: true });
  const { code, stdout, stderr } = await runCli(['install-service', '--config', odd, '--print']);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, '');
  assert.match(stderr, /USAGE.*--config.*control character/s);
});

test('install-service — renderUnit never writes a control character, whatever reaches it', () => {
  assert.throws(() => renderUnit(TEMPLATE, '/etc/cloudlet/cloudlet.yaml', ['/srv/a\nExecStartPre=/bin/true']), /control character/);
  assert.throws(() => renderUnit(TEMPLATE, '/etc/cloudlet/c\u0000.yaml', []), /control character/);
  const unit = renderUnit(TEMPLATE, '/etc/cloudlet/cloudlet.yaml', ['/srv/vm dir']);
  assert.match(unit, /^ReadWritePaths=-"\/srv\/vm dir"$/m);
});
