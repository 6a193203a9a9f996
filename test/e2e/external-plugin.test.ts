import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { repoRoot, runCli, spawnAgent, tempDir, writeConfig } from '../helpers.ts';

// A third-party plugin as an operator would drop it on a host: a folder outside the repo, no package.json,
// no node_modules; it gets zod and definePlugin from the agent through the factory form.
const PLUGIN_INDEX = `
export default ({ definePlugin, z }) =>
  definePlugin({
    name: 'dice',
    version: '0.3.0',
    api: '^1.0.0',
    options: z.object({ sides: z.number().int().min(2).max(1000).default(6) }).strict(),
    errors: { DICE_TOO_MANY: { message: 'too many dice', retryable: false } },
    messages: {
      'dice.roll': {
        payload: z.object({ count: z.number().int().min(1).max(100) }).strict(),
        handler: new URL('./roll.mjs', import.meta.url),
        // Counted from acceptance, so the first call pays for its thread's start: 2 s was short under load.
        pool: { maxThreads: 1, timeoutMs: 20000 },
      },
    },
  });
`;

const PLUGIN_HANDLER = `
import { isMainThread, threadId } from 'node:worker_threads';
export default async function roll({ count }, ctx) {
  if (count > 50) throw Object.assign(new Error('at most 50 dice at once'), { code: 'DICE_TOO_MANY' });
  ctx.progress('rolling', { count });
  const rolls = Array.from({ length: count }, () => 1 + Math.floor(Math.random() * ctx.options.sides));
  return { rolls, sides: ctx.options.sides, isMainThread, threadId };
}
`;

test('external plugin — loaded by path from a folder outside the repo, it handles a new type in its own pool', async (t) => {
  const dir = await tempDir(t, 'cloudlet-thirdparty-');
  assert.ok(!dir.startsWith(repoRoot));
  await mkdir(join(dir, 'plugins', 'dice'), { recursive: true });
  await writeFile(join(dir, 'plugins', 'dice', 'index.mjs'), PLUGIN_INDEX);
  await writeFile(join(dir, 'plugins', 'dice', 'roll.mjs'), PLUGIN_HANDLER);
  const config = await writeConfig(
    dir,
    'cloudlet.yaml',
    `host:\n  id: dice-host\ntransport:\n  kind: local\n  socket: ${join(dir, 'agent.sock')}\nplugins:\n  - use: ./plugins/dice/index.mjs\n    options:\n      sides: 20\n`,
  );

  const check = await runCli(['config', 'check', config]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  const listed = await runCli(['plugins', '--config', config]);
  assert.match(listed.stdout, /dice\s+0\.3\.0\s+dice\.roll\s+0-1 threads, queue 64, timeout 20000 ms/);
  // Settings away from the defaults are shown too (before, the table left tasksPerThread out).
  assert.match(listed.stdout, /core\s+\S+\s+host-info\s+0-1 threads × 16 tasks, queue 64, timeout 5000 ms/);

  await spawnAgent(t, config);
  const roll = await runCli(['call', 'dice.roll', '--config', config, '--payload', '{"count":5}']);
  assert.equal(roll.code, 0, roll.stderr);
  const result = JSON.parse(roll.stdout) as { rolls: number[]; sides: number; isMainThread: boolean; threadId: number };
  assert.equal(result.rolls.length, 5);
  assert.ok(result.rolls.every((r) => r >= 1 && r <= 20));
  assert.equal(result.sides, 20);
  assert.equal(result.isMainThread, false, 'the handler runs in a worker thread, not the agent main thread');
  assert.match(roll.stderr, /rolling \{"count":5\}/);

  const tooMany = await runCli(['call', 'dice.roll', '--config', config, '--payload', '{"count":60}', '--json']);
  assert.equal(tooMany.code, 1);
  assert.equal((JSON.parse(tooMany.stdout) as { error: { code: string } }).error.code, 'DICE_TOO_MANY');

  const info = await runCli(['call', 'host-info', '--config', config]);
  const plugins = (JSON.parse(info.stdout) as { plugins: { name: string; messageTypes: string[] }[] }).plugins;
  assert.deepEqual(plugins.find((p) => p.name === 'dice')?.messageTypes, ['dice.roll']);
});
