/**
 * The compiled form that `npm pack` ships (scripts/build.mjs → dist/): built in a copy of the package, its
 * agent runs without a TypeScript loader, worker threads run the compiled handlers, a third party's
 * TypeScript plugin still loads (tsx registered on demand), and sources edited after the build are run
 * instead of the stale dist/.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { appendFile, cp, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { repoRoot, tempDir, writeConfig } from '../helpers.ts';

const PACKAGE_PARTS = ['core', 'plugins', 'workers', 'config', 'docs', 'scripts', 'package.json', 'tsconfig.json', 'tsconfig.build.json'];

// Not the test runner's CLOUDLET_FROM_SOURCE=1: these processes choose as an installed cloudlet does.
const ENV = { ...process.env, CLOUDLET_FROM_SOURCE: '', CLOUDLET_LOG_FORMAT: 'json' };

async function packageCopy(t: TestContext): Promise<string> {
  const dir = await tempDir(t, 'cloudlet-compiled-');
  for (const part of PACKAGE_PARTS) await cp(join(repoRoot, part), join(dir, part), { recursive: true });
  await symlink(join(repoRoot, 'node_modules'), join(dir, 'node_modules'));
  const build = spawnSync(process.execPath, [join(dir, 'scripts/build.mjs')], { cwd: dir, encoding: 'utf8', timeout: 120_000 });
  assert.equal(build.status, 0, `${build.stdout}${build.stderr}`);
  return dir;
}

function cli(root: string, args: string[]): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [join(root, 'core/cli/bin.js'), ...args], { env: ENV, encoding: 'utf8', timeout: 30_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Starts the copy's agent; resolves with its "ready" log line once it is up. Killed after the test. */
async function startAgent(t: TestContext, root: string, config: string): Promise<{ ready: Record<string, unknown>; output: () => string }> {
  const child = spawn(process.execPath, [join(root, 'core/cli/bin.js'), 'agent', '--config', config], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => child.on('exit', resolve));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    const line = output.split('\n').find((l) => l.includes('ready as host'));
    if (line) return { ready: JSON.parse(line) as Record<string, unknown>, output: () => output };
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode} before it was ready:\n${output}`);
    if (Date.now() > deadline) throw new Error(`agent not ready within 30 s:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// A third-party plugin written in TypeScript (type annotations Node cannot run by itself), outside the package.
const TS_PLUGIN = `
const sides: number = 6;
export default ({ definePlugin, z }: any) =>
  definePlugin({
    name: 'typed-dice',
    version: '1.0.0',
    api: '^1.0.0',
    messages: {
      'typed-dice.roll': { payload: z.object({}).strict(), handler: new URL('./roll.ts', import.meta.url) },
    },
  });
export { sides };
`;
const TS_HANDLER = `
import { isMainThread } from 'node:worker_threads';
export default async function roll(_payload: Record<string, never>): Promise<{ value: number; isMainThread: boolean }> {
  const value: number = 4;
  return { value, isMainThread };
}
`;

test('compiled — dist/ runs the agent and its workers without the sources; a TypeScript plugin still loads', async (t) => {
  const root = await packageCopy(t);
  const built = await readdir(join(root, 'dist'));
  assert.deepEqual(built.sort(), ['BUILD.json', 'core', 'plugins', 'workers']);
  // Module URLs point at the compiled handlers.
  assert.match(await readFile(join(root, 'dist/plugins/core/index.js'), 'utf8'), /new URL\('\.\/host-info\.js', import\.meta\.url\)/);

  const dir = await tempDir(t, 'cloudlet-compiled-host-');
  await mkdir(join(dir, 'typed-dice'));
  await writeFile(join(dir, 'typed-dice', 'index.ts'), TS_PLUGIN);
  await writeFile(join(dir, 'typed-dice', 'roll.ts'), TS_HANDLER);
  // ESM, as docs/PLUGINS.md asks of a TypeScript plugin (tsx's ESM hooks leave CommonJS-scoped .ts alone).
  await writeFile(join(dir, 'typed-dice', 'package.json'), '{"type":"module"}\n');
  const socket = join(dir, 'agent.sock');
  const config = await writeConfig(dir, 'cloudlet.yaml', `host: { id: chost }\ntransport: { kind: local, socket: ${socket} }\nplugins:\n  - use: ${join(dir, 'typed-dice', 'index.ts')}\n`);

  const { ready } = await startAgent(t, root, config);
  assert.equal(ready.code, 'dist');
  const info = cli(root, ['call', 'host-info', '--config', config]);
  assert.equal(info.code, 0, info.stderr);
  assert.equal((JSON.parse(info.stdout) as { host: string }).host, 'chost');
  assert.doesNotMatch(info.stderr, /CLOUDLET_STALE_DIST/);
  const rolled = cli(root, ['call', 'typed-dice.roll', '--config', config]);
  assert.equal(rolled.code, 0, rolled.stderr);
  assert.deepEqual(JSON.parse(rolled.stdout), { value: 4, isMainThread: false });
});

test('compiled — sources edited after the build run instead of the stale dist/, with a warning', async (t) => {
  const root = await packageCopy(t);
  await appendFile(join(root, 'core/version.ts'), '\n// edited after the build\n');
  const dir = await tempDir(t, 'cloudlet-compiled-stale-');
  const config = await writeConfig(dir, 'cloudlet.yaml', `host: { id: shost }\ntransport: { kind: local, socket: ${join(dir, 'agent.sock')} }\nplugins: []\n`);
  const checked = cli(root, ['config', 'check', config]);
  assert.equal(checked.code, 0, checked.stderr);
  assert.match(checked.stderr, /CLOUDLET_STALE_DIST.*npm run build/);
  const { ready } = await startAgent(t, root, config);
  assert.equal(ready.code, 'sources');
});

test('compiled — files that are not code (an editor swap file, notes) do not make dist/ stale', async (t) => {
  const root = await packageCopy(t);
  await writeFile(join(root, 'core', '.version.ts.swp'), 'editor state');
  await writeFile(join(root, 'plugins', 'NOTES.txt'), 'operator notes');
  const dir = await tempDir(t, 'cloudlet-compiled-notes-');
  const config = await writeConfig(dir, 'cloudlet.yaml', `host: { id: nhost }\ntransport: { kind: local, socket: ${join(dir, 'agent.sock')} }\nplugins: []\n`);
  const checked = cli(root, ['config', 'check', config]);
  assert.equal(checked.code, 0, checked.stderr);
  assert.doesNotMatch(checked.stderr, /CLOUDLET_STALE_DIST/);
});

test('compiled — the npm package carries dist/, the launcher and the files beside the code, and its dist/ matches its sources', async (t) => {
  const root = await packageCopy(t);
  const out = await tempDir(t, 'cloudlet-pack-');
  // The copy is built already; --ignore-scripts skips prepack's second build.
  const pack = spawnSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', out], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  assert.equal(pack.status, 0, pack.stderr);
  const [info] = JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[];
  const files = info!.files.map((f) => f.path);
  for (const needed of [
    'package.json',
    'core/cli/bin.js',
    'core/cli/source-fingerprint.mjs',
    'dist/BUILD.json',
    'dist/core/cli/main.js',
    'dist/core/plugin-api.js',
    'dist/core/plugin-api.d.ts',
    'dist/workers/boot.mjs',
    'dist/workers/tinypool-preload.mjs',
    'dist/workers/handler-worker.js',
    'dist/plugins/qemu-backend/handlers/create-vm.js',
    'config/cloudlet.service',
    'docs/CLI.md',
  ]) {
    assert.ok(files.includes(needed), `${needed} is not in the package`);
  }
  assert.deepEqual(files.filter((f) => /^(test|bench|\.cache|node_modules|\.ci)\//.test(f)), []);
  // Unpacked as npm installs it, the sources hash to what dist/BUILD.json recorded: an installed agent runs dist/.
  const unpacked = await tempDir(t, 'cloudlet-unpacked-');
  const untar = spawnSync('tar', ['-xzf', join(out, info!.filename), '-C', unpacked], { encoding: 'utf8' });
  assert.equal(untar.status, 0, untar.stderr);
  const { sourceFingerprint } = (await import(join(repoRoot, 'core/cli/source-fingerprint.mjs'))) as { sourceFingerprint: (root: string) => string };
  const build = JSON.parse(await readFile(join(unpacked, 'package', 'dist', 'BUILD.json'), 'utf8')) as { sources: string };
  assert.equal(sourceFingerprint(join(unpacked, 'package')), build.sources);
});

/**
 * A third party's plugin project with cloudlet as a dependency (node_modules/cloudlet, here a link to the
 * copy): its JavaScript plugin imports `cloudlet/plugin-api` by name, and `check.ts` is what its author would
 * type-check with tsc.
 */
async function pluginProject(t: TestContext, root: string): Promise<string> {
  const dir = await tempDir(t, 'cloudlet-plugin-project-');
  await mkdir(join(dir, 'node_modules'));
  await symlink(root, join(dir, 'node_modules', 'cloudlet'));
  await writeFile(join(dir, 'package.json'), '{ "name": "dice-plugin", "type": "module", "private": true }\n');
  await writeFile(
    join(dir, 'index.js'),
    `import { definePlugin, z } from 'cloudlet/plugin-api';
export default definePlugin({
  name: 'named-dice',
  version: '1.0.0',
  api: '^1.0.0',
  messages: { 'named-dice.roll': { payload: z.object({}).strict(), handler: new URL('./roll.js', import.meta.url) } },
});
`,
  );
  await writeFile(join(dir, 'roll.js'), `import { CORE_API_VERSION } from 'cloudlet/plugin-api';\nexport default async () => ({ value: 4, api: CORE_API_VERSION });\n`);
  await writeFile(
    join(dir, 'tsconfig.json'),
    '{ "compilerOptions": { "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext", "strict": true, "noEmit": true, "types": [] }, "files": ["check.ts"] }\n',
  );
  return dir;
}

const TYPED_USE = `import { CloudletError, definePlugin, z, type HandlerContext, type PluginKit } from 'cloudlet/plugin-api';
export const plugin = definePlugin({ name: 'checked', version: '1.0.0', api: '^1.0.0', options: z.object({ sides: z.number().int() }), messages: {} });
export function sides(ctx: HandlerContext<{ sides: number }>, kit: PluginKit): number {
  if (ctx.options.sides < 1) throw new CloudletError('CHECKED_BAD', 'no sides');
  return ctx.options.sides + kit.CORE_API_VERSION.length;
}
`;

test('compiled — a plugin project imports cloudlet/plugin-api under plain Node, type-checks against it with tsc, and its plugin runs in the agent', { timeout: 180_000 }, async (t) => {
  // Before, cloudlet/plugin-api named core/plugin-api.ts: plain Node refused the .ts file, and tsc in the
  // plugin project stumbled on the TypeScript sources' own import paths.
  const root = await packageCopy(t);
  const project = await pluginProject(t, root);
  const plain = spawnSync(process.execPath, ['--input-type=module', '-e', "import { CORE_API_VERSION, z } from 'cloudlet/plugin-api'; console.log(CORE_API_VERSION, typeof z.object);"], {
    cwd: project,
    encoding: 'utf8',
  });
  assert.equal(plain.status, 0, plain.stderr);
  const { CORE_API_VERSION } = (await import(join(repoRoot, 'core/version.ts'))) as { CORE_API_VERSION: string };
  assert.equal(plain.stdout.trim(), `${CORE_API_VERSION} function`);

  const tsc = join(repoRoot, 'node_modules/typescript/bin/tsc');
  await writeFile(join(project, 'check.ts'), TYPED_USE);
  const typed = spawnSync(process.execPath, [tsc, '-p', project], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(typed.status, 0, `${typed.stdout}${typed.stderr}`);
  // The types are the API's, not `any`: a wrong use is an error.
  await writeFile(join(project, 'check.ts'), `${TYPED_USE}export const wrong: string = sides as unknown as HandlerContext<{ sides: number }>['options']['sides'];\n`);
  const mistyped = spawnSync(process.execPath, [tsc, '-p', project], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(mistyped.status, 2, `${mistyped.stdout}${mistyped.stderr}`);
  assert.match(mistyped.stdout, /check\.ts.*TS2322: Type 'number' is not assignable to type 'string'/);

  const dir = await tempDir(t, 'cloudlet-compiled-project-');
  const config = await writeConfig(dir, 'cloudlet.yaml', `host: { id: phost }\ntransport: { kind: local, socket: ${join(dir, 'agent.sock')} }\nplugins:\n  - use: ${join(project, 'index.js')}\n`);
  const { ready } = await startAgent(t, root, config);
  assert.equal(ready.code, 'dist');
  const rolled = cli(root, ['call', 'named-dice.roll', '--config', config]);
  assert.equal(rolled.code, 0, rolled.stderr);
  assert.deepEqual(JSON.parse(rolled.stdout), { value: 4, api: CORE_API_VERSION });
});

test('compiled — a checkout with no dist/ names the build as the fix when a plugin imports cloudlet/plugin-api', { timeout: 120_000 }, async (t) => {
  const root = await packageCopy(t);
  await rm(join(root, 'dist'), { recursive: true });
  const project = await pluginProject(t, root);
  const dir = await tempDir(t, 'cloudlet-compiled-unbuilt-');
  const config = await writeConfig(dir, 'cloudlet.yaml', `host: { id: uhost }\ntransport: { kind: local, socket: ${join(dir, 'agent.sock')} }\nplugins:\n  - use: ${join(project, 'index.js')}\n`);
  const checked = cli(root, ['config', 'check', config]);
  assert.equal(checked.code, 3, checked.stderr); // the config's plugins do not load
  assert.match(checked.stdout, /PLUGIN_IMPORT_FAILED/);
  // The folder the plugin project's cloudlet/plugin-api resolved into: the link to the unbuilt checkout.
  const folder = join(project, 'node_modules', 'cloudlet');
  assert.ok(checked.stdout.includes(`cloudlet/plugin-api is the compiled plugin API: run \`npm run build\` in ${folder} (a checkout has no dist/ until then)`), checked.stdout);
});
