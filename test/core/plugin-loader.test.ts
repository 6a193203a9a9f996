/** Plugin loading: every failure has its own code, every problem of a run is reported, order and sources are right. */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { CORE_API_VERSION } from '../../core/version.ts';
import { definitionKeysAt } from '../../core/plugins/definition-schema.ts';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { checkHostConfig } from '../../core/config/host-config.ts';
import { rawConfigFrom } from '../../core/config/load.ts';
import type { ConfigProblem } from '../../core/config/problems.ts';
import type { PluginEntry } from '../../core/config/schema.ts';
import { loadPlugins, type PluginLoadResult } from '../../core/plugins/loader.ts';
import { runCli, tempDir, testkitPath } from '../helpers.ts';

const fixturesDir = fileURLToPath(new URL('../fixtures/plugins/', import.meta.url));
const fixture = (name: string) => join(fixturesDir, name, 'index.ts');
/** A config file beside the fixtures (it need not exist): `./name/index.ts` paths resolve against its folder. */
const configFile = join(fixturesDir, 'cloudlet.yaml');

async function load(...entries: (string | PluginEntry)[]): Promise<PluginLoadResult> {
  return loadPlugins(
    entries.map((entry, index) => ({ index, entry: typeof entry === 'string' ? { use: entry } : entry })),
    configFile,
  );
}

/** `path code` per problem, the shortest complete summary of what a run reported. */
const summary = (problems: readonly ConfigProblem[]) => problems.map((p) => `${p.path} ${p.code}`);
const names = (result: PluginLoadResult) => result.plugins.map((p) => p.plugin.name);

function onlyProblem(result: PluginLoadResult): ConfigProblem {
  assert.equal(result.problems.length, 1, `expected one problem, got ${JSON.stringify(result.problems, null, 2)}`);
  return result.problems[0] as ConfigProblem;
}

test('loader — loads a valid plugin after the built-in core plugin, with option defaults applied', async () => {
  const result = await load(testkitPath);
  assert.deepEqual(result.problems, []);
  assert.deepEqual(names(result), ['core', 'testkit']);
  const testkit = result.plugins[1];
  assert.equal(testkit?.kind, 'path');
  assert.equal(testkit?.index, 0);
  assert.equal(testkit?.source, pathToFileURL(testkitPath).href);
  assert.deepEqual(testkit?.options, { greeting: 'hello', hasCapacity: true });
});

test('loader — PLUGIN_NOT_FOUND for a path that does not exist, naming the resolved path', async () => {
  const problem = onlyProblem(await load('./no-such-plugin/index.ts'));
  assert.equal(problem.code, 'PLUGIN_NOT_FOUND');
  assert.equal(problem.path, 'plugins[0].use');
  assert.equal(problem.file, configFile);
  assert.ok(problem.message.includes(join(fixturesDir, 'no-such-plugin', 'index.ts')), problem.message);
});

test('loader — PLUGIN_NOT_FOUND for an npm package that is not installed', async () => {
  const problem = onlyProblem(await load('cloudlet-plugin-that-does-not-exist'));
  assert.equal(problem.code, 'PLUGIN_NOT_FOUND');
  assert.equal(problem.path, 'plugins[0].use');
  assert.match(problem.message, /npm package "cloudlet-plugin-that-does-not-exist" is not installed/);
});

test('loader — PLUGIN_NOT_FOUND for a name that is neither built-in, a path nor a package name', async () => {
  const problem = onlyProblem(await load('Not A Plugin!'));
  assert.equal(problem.code, 'PLUGIN_NOT_FOUND');
  assert.match(problem.message, /"Not A Plugin!" is not a built-in plugin .*a path starting with \.\/, \.\.\/ or \/, or a valid npm package name/);
});

test('loader — a file: URL with a remote host or an encoded slash is PLUGIN_NOT_FOUND saying what file: URLs may be', async () => {
  // Before, Node's fileURLToPath threw, and the problem was PLUGIN_IMPORT_FAILED with its bare TypeError.
  for (const use of ['file://remotehost/x.mjs', 'file:///opt/a%2Fb.mjs', 'file://[::1/x.mjs']) {
    const problem = onlyProblem(await load(use));
    assert.equal(problem.code, 'PLUGIN_NOT_FOUND', use);
    assert.equal(problem.path, 'plugins[0].use');
    assert.match(problem.message, new RegExp(`^"${use.replace(/[[\]./]/g, '\\$&')}" is not a local file URL \\(.+\\); write file:///absolute/path, or a path starting with \\./, \\.\\./ or /$`), problem.message);
    assert.doesNotMatch(problem.message, /TypeError/);
  }
});

test('loader — a package subpath with . or .. segments is refused, never resolved outside the package', async (t) => {
  // Before, "pkg/../../outside.ts" passed the package-name check and was joined onto node_modules/pkg: it
  // loaded the file two folders up, outside any node_modules.
  const dir = await tempDir(t);
  await mkdir(join(dir, 'node_modules', 'pkg'), { recursive: true });
  await writeFile(join(dir, 'node_modules', 'pkg', 'package.json'), '{"name": "pkg", "version": "1.0.0"}');
  await writeFile(join(dir, 'outside.ts'), `export { default } from ${JSON.stringify(pathToFileURL(testkitPath).href)};\n`);
  for (const use of ['pkg/../../outside.ts', 'pkg/./../../outside.ts', 'pkg//x.js', 'pkg/sub/..']) {
    const result = await loadPlugins([{ index: 0, entry: { use } }], join(dir, 'cloudlet.yaml'));
    assert.deepEqual(names(result), ['core'], use);
    const problem = onlyProblem(result);
    assert.equal(problem.code, 'PLUGIN_NOT_FOUND', use);
    assert.match(problem.message, /a package subpath may not have empty, "\." or "\.\." parts/, use);
  }
});

test('loader — a TypeScript plugin outside any "type": "module" package is PLUGIN_IMPORT_FAILED saying to add one', async (t) => {
  // Before, the message was Node's "Cannot require() ES Module … in a cycle … Try making at least part of
  // the dependency in the graph lazily loaded", which points nowhere near the fix. Through the CLI, which
  // registers tsx for ES modules only (this test process registers it for CommonJS too, and would load it).
  const dir = await tempDir(t);
  const api = JSON.stringify(pathToFileURL(fileURLToPath(new URL('../../core/plugin-api.ts', import.meta.url))).href);
  for (const folder of ['p', 'q']) {
    await mkdir(join(dir, folder));
    await writeFile(join(dir, folder, 'helper.ts'), 'export const version: string = "1.0.0";\n');
    await writeFile(join(dir, folder, 'index.ts'), `import { definePlugin } from ${api};\nimport { version } from "./helper.ts";\nexport default definePlugin({ name: "ts-plain", version, api: "^1.0.0" });\n`);
    await writeFile(join(dir, `${folder}.yaml`), `plugins:\n  - use: ./${folder}/index.ts\n`);
  }
  const plain = await runCli(['config', 'check', join(dir, 'p.yaml')]);
  assert.equal(plain.code, 3, plain.stdout + plain.stderr);
  assert.match(plain.stdout + plain.stderr, /\[PLUGIN_IMPORT_FAILED\][\s\S]*a TypeScript plugin is loaded as CommonJS unless the nearest package\.json says "type": "module": add one beside it \(\{"type": "module"\}, PLUGINS\.md section 10\)/);

  await writeFile(join(dir, 'q', 'package.json'), '{"type": "module"}\n');
  const fixed = await runCli(['config', 'check', join(dir, 'q.yaml')]);
  assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
});

test('loader — a plugin whose own import is missing is PLUGIN_IMPORT_FAILED naming that import, not PLUGIN_NOT_FOUND', async (t) => {
  // Before, Node's "Cannot find module '<helper>' imported from <plugin>" names the plugin's path too, and
  // was taken for the plugin itself missing: ERRORS.md's fix for PLUGIN_NOT_FOUND (check the path) misled.
  const dir = await tempDir(t);
  await writeFile(join(dir, 'package.json'), '{"type": "module"}\n');
  await writeFile(join(dir, 'index.js'), 'import { helper } from "./missing-helper.js";\nexport default helper;\n');
  const problem = onlyProblem(await load(join(dir, 'index.js')));
  assert.equal(problem.code, 'PLUGIN_IMPORT_FAILED');
  assert.match(problem.message, /Cannot find module '[^']*missing-helper\.js' imported from/);
});

test('loader — under a folder with a quote in its name, an unbuilt cloudlet/plugin-api still gets the hint to build', async (t) => {
  // Node quotes the missing path as it is ('…/o'brien/…/plugin-api.js'): read only up to its first quote,
  // the path did not look like the compiled plugin API, and the hint was missing.
  const dir = join(await tempDir(t), "o'brien");
  const cloudlet = join(dir, 'node_modules', 'cloudlet');
  await mkdir(cloudlet, { recursive: true });
  await writeFile(join(cloudlet, 'package.json'), JSON.stringify({ name: 'cloudlet', type: 'module', exports: { './plugin-api': { default: './dist/core/plugin-api.js' } } }));
  await writeFile(join(dir, 'package.json'), '{"type": "module"}\n');
  await writeFile(join(dir, 'index.js'), 'import { definePlugin } from "cloudlet/plugin-api";\nexport default definePlugin({ name: "quoted", version: "1.0.0", api: "^1.0.0" });\n');
  const problem = onlyProblem(await load(join(dir, 'index.js')));
  assert.equal(problem.code, 'PLUGIN_IMPORT_FAILED');
  assert.ok(problem.message.includes(`cloudlet/plugin-api is the compiled plugin API: run \`npm run build\` in ${cloudlet}`), problem.message);
});

test('loader — PLUGIN_IMPORT_FAILED when the module throws while it is imported', async () => {
  const problem = onlyProblem(await load(fixture('throws-on-import')));
  assert.equal(problem.code, 'PLUGIN_IMPORT_FAILED');
  assert.equal(problem.path, 'plugins[0].use');
  assert.match(problem.message, /throws-on-import refused to load on purpose/);
});

test('loader — PLUGIN_IMPORT_FAILED when a factory-form plugin throws', async () => {
  const problem = onlyProblem(await load(fixture('factory-throws')));
  assert.equal(problem.code, 'PLUGIN_IMPORT_FAILED');
  assert.match(problem.message, /factory-throws refused to build on purpose/);
});

test('loader — PLUGIN_INVALID when the default export is not a plugin, or missing', async () => {
  const result = await load(fixture('not-a-plugin'), fixture('no-default'));
  assert.deepEqual(summary(result.problems), ['plugins[0].use PLUGIN_INVALID', 'plugins[1].use PLUGIN_INVALID']);
  assert.match(result.problems[0]?.message ?? '', /must default-export a plugin made with definePlugin\(\).*found number/);
  assert.match(result.problems[1]?.message ?? '', /found undefined/);
  assert.deepEqual(names(result), ['core']);
});

test('loader — PLUGIN_INVALID for a plain object that was not made with definePlugin()', async () => {
  const problem = onlyProblem(await load(fixture('plain-object')));
  assert.equal(problem.code, 'PLUGIN_INVALID');
  assert.match(problem.message, /was not made with definePlugin\(\)/);
});

test('loader — PLUGIN_INVALID for each broken field of the definition', async () => {
  const result = await load(fixture('bad-definition'));
  assert.deepEqual(summary(result.problems), Array(3).fill('plugins[0].use PLUGIN_INVALID'));
  const messages = result.problems.map((p) => p.message).join('\n');
  for (const field of ['"name"', '"version"', '"api"']) assert.ok(messages.includes(field), `${field} missing from:\n${messages}`);
});

test('loader — PLUGIN_INVALID for a handler named by a relative URL', async () => {
  const problem = onlyProblem(await load(fixture('relative-handler')));
  assert.equal(problem.code, 'PLUGIN_INVALID');
  assert.match(problem.message, /message "relative\.ping" of plugin "relative-handler": module "\.\/handler\.ts" is not an absolute URL/);
});

test('loader — PLUGIN_INVALID for seesInFlight naming a type that is not the plugin\'s own', async () => {
  const problem = onlyProblem(await load(fixture('sees-other-plugin')));
  assert.equal(problem.code, 'PLUGIN_INVALID');
  assert.match(problem.message, /message "peek\.find" of plugin "sees-other-plugin": seesInFlight names "create-vm", which is not one of this plugin's message types \(peek\.own, peek\.find\)/);
});

test('loader — PLUGIN_INVALID for a handler module that does not exist', async () => {
  const problem = onlyProblem(await load(fixture('missing-handler')));
  assert.equal(problem.code, 'PLUGIN_INVALID');
  assert.match(problem.message, /message "[a-z.]+" of plugin "missing-handler": module .*missing-handler\/no-such-handler\.ts does not exist/);
});

test('loader — PLUGIN_API_MISMATCH says which range the plugin wants and which API the core provides', async () => {
  const problem = onlyProblem(await load(fixture('api-mismatch')));
  assert.equal(problem.code, 'PLUGIN_API_MISMATCH');
  assert.equal(problem.path, 'plugins[0].use');
  assert.equal(problem.found, '^2.0.0');
  assert.equal(problem.allowed, `a range that includes ${CORE_API_VERSION}`);
});

test('loader — a plugin for a newer core API with definition keys this core does not know is PLUGIN_API_MISMATCH only', async () => {
  // Before: three PLUGIN_INVALID "Unrecognized key" problems, and no word of the API version.
  const problem = onlyProblem(await load(fixture('api-future')));
  assert.equal(problem.code, 'PLUGIN_API_MISMATCH');
  assert.equal(problem.found, '^1.99.0');
  assert.match(problem.message, /plugin "api-future" 1\.0\.0 supports core API \^1\.99\.0; this agent provides/);
});

test('loader — a plugin for a newer core API without a name is PLUGIN_API_MISMATCH naming its module', async () => {
  // Before: 'plugin "undefined" undefined supports core API ^1.99.0'.
  const problem = onlyProblem(await load(fixture('api-future-nameless')));
  assert.equal(problem.code, 'PLUGIN_API_MISMATCH');
  assert.match(problem.message, /^the plugin in file:\/\/.*api-future-nameless\/index\.ts supports core API \^1\.99\.0/);
});

test('loader — a definition key the API does not have (a misspelling) is PLUGIN_INVALID naming it, the key it likely meant, and the keys allowed', async () => {
  // Before: '"(definition)" Unrecognized key: "dependecies"', with nothing of what is allowed.
  const problem = onlyProblem(await load(fixture('misspelt-key')));
  assert.equal(problem.code, 'PLUGIN_INVALID');
  assert.match(
    problem.message,
    /^plugin in file:\/\/\S+\/misspelt-key\/index\.ts: unknown key "dependecies" in the definition \(did you mean "dependencies"\?\); allowed: name, version, api, description, dependencies, provides, requires, capabilityModules, options, messages, errors, hooks, checkOptions$/,
  );
  // Inside a message definition: the keys a message takes.
  const nested = definitionKeysAt(['messages', 'test.x']);
  assert.deepEqual(nested, ['payload', 'handler', 'description', 'pool', 'serializeBy', 'handlesRepeats', 'seesInFlight']);
  assert.ok(definitionKeysAt(['messages', 'test.x', 'pool'])?.includes('cancelGraceMs'));
  assert.equal(definitionKeysAt(['name']), undefined, 'not an object');
});

test('loader — a handler module named in use: is PLUGIN_INVALID saying so, and is not run', async () => {
  // Before: it was called as a factory with the kit, and failed inside the handler ("reading 'log'").
  const problem = onlyProblem(await load(fixture('handler-as-plugin')));
  assert.equal(problem.code, 'PLUGIN_INVALID');
  assert.match(problem.message, /handler-as-plugin\/index\.ts default-exports a function of 2 parameters, like a handler \(payload, ctx\); .*name the plugin's own module in "use"/);
});

test('loader — a factory that throws something other than an Error: its text is in the problem', async () => {
  const problem = onlyProblem(await load(fixture('factory-throws-string')));
  assert.equal(problem.code, 'PLUGIN_IMPORT_FAILED');
  assert.match(problem.message, /threw: factory-throws-string refused with a bare string/);
});

test('loader — options that pass the schema but cannot be sent to a worker thread are PLUGIN_OPTIONS_INVALID', async () => {
  const problem = onlyProblem(await load(fixture('options-uncloneable')));
  assert.equal(problem.code, 'PLUGIN_OPTIONS_INVALID');
  assert.equal(problem.path, 'plugins[0].options');
  assert.match(problem.message, /plugin "options-uncloneable": its options schema produced a value that cannot be copied to a worker thread/);
});

test('loader — PLUGIN_DUPLICATE when one plugin is listed twice, keeping the first', async () => {
  const result = await load(testkitPath, testkitPath);
  const problem = onlyProblem(result);
  assert.equal(problem.code, 'PLUGIN_DUPLICATE');
  assert.equal(problem.path, 'plugins[1].use');
  assert.match(problem.message, /"testkit" is already loaded by plugins\[0\]\.use/);
  assert.deepEqual(
    result.plugins.map((p) => p.index),
    [-1, 0],
  );
});

test('loader — PLUGIN_DEPENDENCY_MISSING names the plugin to add', async () => {
  const problem = onlyProblem(await load(fixture('needs-testkit')));
  assert.equal(problem.code, 'PLUGIN_DEPENDENCY_MISSING');
  assert.equal(problem.path, 'plugins[0].use');
  assert.equal(problem.allowed, 'add { use: testkit } to plugins');
});

test('loader — PLUGIN_DEPENDENCY_VERSION shows the loaded version and the wanted range', async () => {
  const problem = onlyProblem(await load(testkitPath, fixture('needs-testkit-2')));
  assert.equal(problem.code, 'PLUGIN_DEPENDENCY_VERSION');
  assert.equal(problem.path, 'plugins[1].use');
  assert.equal(problem.found, '1.2.3');
  assert.equal(problem.allowed, '^2.0.0');
});

test('loader — PLUGIN_DEPENDENCY_CYCLE is reported once, with the cycle spelled out', async () => {
  const problem = onlyProblem(await load(fixture('cycle-a'), fixture('cycle-b')));
  assert.equal(problem.code, 'PLUGIN_DEPENDENCY_CYCLE');
  assert.equal(problem.path, 'plugins[0].use');
  assert.match(problem.message, /cycle-a → cycle-b → cycle-a/);
});

test('loader — PLUGIN_CAPABILITY_MISSING lists the capabilities that are provided', async () => {
  const problem = onlyProblem(await load(testkitPath, fixture('discovery-consumer')));
  assert.equal(problem.code, 'PLUGIN_CAPABILITY_MISSING');
  assert.equal(problem.path, 'plugins[1].use');
  assert.match(problem.message, /requires capability "ip-discovery"/);
  assert.equal(problem.allowed, 'test-capability');
});

test('loader — PLUGIN_MESSAGE_CONFLICT for the built-in host-info and for another plugin’s type', async () => {
  const alone = onlyProblem(await load(fixture('conflict')));
  assert.equal(alone.code, 'PLUGIN_MESSAGE_CONFLICT');
  assert.equal(alone.path, 'plugins[0].use');
  assert.match(alone.message, /message type "host-info" is claimed by both "core" \(\(built-in core plugin\)\) and "conflict"/);

  const withTestkit = await load(testkitPath, fixture('conflict'));
  assert.deepEqual(summary(withTestkit.problems), ['plugins[1].use PLUGIN_MESSAGE_CONFLICT', 'plugins[1].use PLUGIN_MESSAGE_CONFLICT']);
  assert.match(withTestkit.problems[1]?.message ?? '', /"test\.echo" is claimed by both "testkit" \(plugins\[0\]\.use\) and "conflict"/);
});

test('loader — PLUGIN_OPTIONS_INVALID with the path into the options, what was found and what is allowed', async () => {
  const result = await load({ use: testkitPath, options: { greeting: 42, colour: 'red' } });
  const byPath = new Map(result.problems.map((p) => [p.path, p]));
  assert.deepEqual(summary(result.problems).sort(), ['plugins[0].options PLUGIN_OPTIONS_INVALID', 'plugins[0].options.greeting PLUGIN_OPTIONS_INVALID']);
  assert.equal(byPath.get('plugins[0].options.greeting')?.found, '42 (number)');
  assert.equal(byPath.get('plugins[0].options.greeting')?.allowed, 'string');
  assert.equal(byPath.get('plugins[0].options')?.found, 'colour');
  assert.equal(byPath.get('plugins[0].options')?.allowed, 'greeting, hasCapacity');
  assert.deepEqual(names(result), ['core'], 'a plugin with invalid options is not loaded');
});

test('loader — PLUGIN_OPTIONS_INVALID when a plugin without options is given some', async () => {
  const problem = onlyProblem(await load({ use: fixture('provider-a'), options: { interval: 5 } }));
  assert.equal(problem.code, 'PLUGIN_OPTIONS_INVALID');
  assert.equal(problem.path, 'plugins[0].options');
  assert.match(problem.message, /plugin "provider-a" takes no options/);
});

test('loader — an error code that collides with a core code or another plugin’s is PLUGIN_INVALID', async () => {
  const alone = onlyProblem(await load(fixture('error-clash')));
  assert.equal(alone.code, 'PLUGIN_INVALID');
  assert.match(alone.message, /error code "TIMEOUT" of plugin "error-clash" is already defined by the core/);

  const withTestkit = await load(testkitPath, fixture('error-clash'));
  assert.deepEqual(summary(withTestkit.problems), ['plugins[1].use PLUGIN_INVALID', 'plugins[1].use PLUGIN_INVALID']);
  assert.match(withTestkit.problems[1]?.message ?? '', /"TESTKIT_REFUSED" of plugin "error-clash" is already defined by "testkit"/);
});

test('loader — reports every failure of one run, each with its code and index', async () => {
  const result = await load(
    './no-such-plugin/index.ts',
    fixture('throws-on-import'),
    fixture('plain-object'),
    fixture('api-mismatch'),
    { use: testkitPath, options: { greeting: 42 } },
    fixture('needs-testkit-2'),
    fixture('conflict'),
  );
  assert.deepEqual(summary(result.problems), [
    'plugins[0].use PLUGIN_NOT_FOUND',
    'plugins[1].use PLUGIN_IMPORT_FAILED',
    'plugins[2].use PLUGIN_INVALID',
    'plugins[3].use PLUGIN_API_MISMATCH',
    'plugins[4].options.greeting PLUGIN_OPTIONS_INVALID',
    'plugins[6].use PLUGIN_MESSAGE_CONFLICT',
    // testkit did not load, so its dependent cannot find it
    'plugins[5].use PLUGIN_DEPENDENCY_MISSING',
  ]);
  assert.ok(result.problems.every((p) => p.file === configFile));
});

test('loader — a factory-form plugin gets the kit and loads, its options parsed by the kit’s zod', async () => {
  const result = await load({ use: fixture('factory'), options: { retries: 5 } });
  assert.deepEqual(result.problems, []);
  const factory = result.plugins.find((p) => p.plugin.name === 'factory');
  assert.equal(factory?.plugin.version, '0.3.0');
  assert.deepEqual(factory?.options, { retries: 5 });
  assert.deepEqual(Object.keys(factory?.plugin.messages ?? {}), ['factory.ping']);
});

test('loader — a plugin path is resolved against the config file’s folder, not the working directory', async (t) => {
  const dir = await tempDir(t);
  const configDir = join(dir, 'etc', 'cloudlet');
  await mkdir(join(configDir, 'plugins'), { recursive: true });
  // A single-file plugin outside any npm project, as an operator would drop into /etc/cloudlet/plugins.
  await writeFile(
    join(configDir, 'plugins', 'local.ts'),
    "export default (kit: any) => kit.definePlugin({ name: 'local', version: '1.0.0', api: '^1.0.0' });\n",
  );
  const hostConfig = join(configDir, 'cloudlet.yaml');
  const toTestkit = relative(configDir, testkitPath);
  assert.ok(toTestkit.startsWith('../'), toTestkit);

  const result = await loadPlugins(
    [
      { index: 0, entry: { use: './plugins/local.ts' } },
      { index: 1, entry: { use: toTestkit } },
    ],
    hostConfig,
  );
  assert.deepEqual(result.problems, []);
  assert.deepEqual(
    result.plugins.map((p) => [p.plugin.name, p.source]),
    [
      ['core', result.plugins[0]?.source],
      ['local', pathToFileURL(join(configDir, 'plugins', 'local.ts')).href],
      ['testkit', pathToFileURL(testkitPath).href],
    ],
  );
  // The same relative path from another folder points nowhere.
  const elsewhere = await loadPlugins([{ index: 0, entry: { use: './plugins/local.ts' } }], join(dir, 'cloudlet.yaml'));
  assert.deepEqual(summary(elsewhere.problems), ['plugins[0].use PLUGIN_NOT_FOUND']);
});

test('loader — a plugin listed before its dependency is ordered after it', async () => {
  const result = await load(fixture('needs-testkit'), testkitPath);
  assert.deepEqual(result.problems, []);
  assert.deepEqual(names(result), ['core', 'testkit', 'needs-testkit']);
  assert.deepEqual(
    result.plugins.map((p) => p.index),
    [-1, 1, 0],
    'each plugin keeps the index of its config entry',
  );
});

test('loader — two hosts with different providers of one capability both load, each routing to its own', async () => {
  const hostWith = (provider: string) =>
    checkHostConfig(rawConfigFrom({ plugins: [{ use: `./${provider}/index.ts` }, { use: './discovery-consumer/index.ts' }] }, configFile));
  const [hostA, hostB] = await Promise.all([hostWith('provider-a'), hostWith('provider-b')]);
  assert.ok(hostA.ok, JSON.stringify(!hostA.ok && hostA.problems));
  assert.ok(hostB.ok, JSON.stringify(!hostB.ok && hostB.problems));
  assert.deepEqual(
    hostA.config.plugins.map((p) => p.plugin.name),
    ['core', 'provider-a', 'discovery-consumer'],
  );
  assert.deepEqual(
    hostB.config.plugins.map((p) => p.plugin.name),
    ['core', 'provider-b', 'discovery-consumer'],
  );
  assert.equal(hostA.config.messages.get('ip-lookup')?.plugin.plugin.name, 'provider-a');
  assert.equal(hostB.config.messages.get('ip-lookup')?.plugin.plugin.name, 'provider-b');

  // On one host the two providers would both claim "ip-lookup".
  const both = await load(fixture('provider-a'), fixture('provider-b'), fixture('discovery-consumer'));
  assert.deepEqual(summary(both.problems), ['plugins[1].use PLUGIN_MESSAGE_CONFLICT']);
});

// A dependency or capability provider that IS listed but failed to load is not reported as absent.
test(
  'loader — a listed dependency or provider that failed to load is not reported as missing from the list',
  async () => {
    const result = await load(
      { use: testkitPath, options: { greeting: 42 } },
      fixture('needs-testkit'),
      { use: fixture('provider-a'), options: { interval: 5 } },
      fixture('discovery-consumer'),
    );
    const cascaded = result.problems.filter((p) => p.path === 'plugins[1].use' || p.path === 'plugins[3].use');
    for (const problem of cascaded) {
      assert.doesNotMatch(problem.message, /not in this host's plugin list|which no configured plugin provides/, problem.message);
      assert.notEqual(problem.allowed, 'add { use: testkit } to plugins');
    }
  },
);
