import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import test from 'node:test';
import { repoRoot } from '../helpers.ts';

// The `deno` npm package (a devDependency) ships the Deno 2 binary.
const denoBin = createRequire(import.meta.url).resolve('deno/bin.cjs');

test('deno — the worker entry runs real handlers in a tinypool under Deno 2', async () => {
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [denoBin, 'run', '--allow-read', '--allow-env', '--allow-sys', '--no-prompt', 'test/deno/run-pool.ts'], {
      cwd: repoRoot,
      env: { ...process.env, NO_COLOR: '1', DENO_NO_UPDATE_CHECK: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (exitCode) => {
      clearTimeout(timer);
      resolve({ code: exitCode, stdout: out, stderr: err });
    });
  });
  assert.equal(code, 0, `deno exited ${code}:\n${stderr}`);
  const results = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, { ok: boolean; result?: Record<string, unknown>; error?: { code: string } }> & {
    progressSeen: unknown[];
  };
  assert.equal(results.hostInfo?.ok, true);
  assert.match(String(results.hostInfo?.result?.runtime), /^deno 2\./, 'host-info ran under Deno');
  assert.equal(results.hostInfo?.result?.host, 'deno-host');
  // Deno gives worker threads a global `require` that Node's do not have: a handler using it would pass
  // here and fail on Node. workers/boot.mjs takes it away.
  assert.deepEqual(results.globals?.result, { require: 'undefined', module: 'undefined', __dirname: 'undefined', __filename: 'undefined' });
  assert.equal(results.echo?.ok, true);
  assert.equal(results.echo?.result?.greeting, 'deno says hi');
  assert.equal(results.echo?.result?.value, 42);
  assert.equal(results.progress?.ok, true);
  assert.deepEqual(results.progressSeen, [
    ['step', { step: 1, of: 2 }],
    ['step', { step: 2, of: 2 }],
  ]);
  assert.equal(results.timeout?.ok, false);
  assert.equal(results.timeout?.error?.code, 'TIMEOUT');
  // A handler stuck on the CPU in a pool whose threads take two messages: found in the run table and stopped.
  assert.equal(results.spinStopped?.error?.code, 'DEADLINE_EXCEEDED');
  assert.deepEqual(results.afterSpin, { ok: true, result: { done: 'after' } });
});
