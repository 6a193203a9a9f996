/** Host config validation: every problem of a file in one run, each saying where, what was found and what is allowed. */
import { readdir, writeFile } from 'node:fs/promises';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { CloudletError } from '../../core/errors.ts';
import { checkHostConfig, type HostConfigCheck } from '../../core/config/host-config.ts';
import { readConfigFile } from '../../core/config/load.ts';
import { type ConfigProblem, formatProblem } from '../../core/config/problems.ts';
import { defaultPoolSettings } from '../../core/config/schema.ts';
import { generateKey } from '../../core/security/keys.ts';
import { repoRoot, runCli, tempDir, testkitPath, writeConfig } from '../helpers.ts';

const CORE_KEYS = 'host, transport, log, limits, shutdown, pools, routing, security, state, plugins';
const LOG_LEVELS = '"fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent"';
/** The environment the CLI runs with: none of the variables that override config values. */
const cleanEnv = { CLOUDLET_HOST_ID: undefined, CLOUDLET_LOG_LEVEL: undefined, CLOUDLET_LOG_FORMAT: undefined, CLOUDLET_SOCKET: undefined };

/** Writes `text` to a temp file and checks it as the agent would, with `env` as the environment. */
async function checkText(t: TestContext, text: string, options: { name?: string; env?: NodeJS.ProcessEnv } = {}) {
  const file = await writeConfig(await tempDir(t), options.name ?? 'cloudlet.yaml', text);
  return { file, result: await checkHostConfig(await readConfigFile(file, options.env ?? {})) };
}

function problemsOf(result: HostConfigCheck): ConfigProblem[] {
  assert.equal(result.ok, false, 'expected the config to be refused');
  return result.ok ? [] : result.problems;
}

function configOf(result: HostConfigCheck) {
  assert.ok(result.ok, `expected the config to be accepted: ${JSON.stringify(!result.ok && result.problems, null, 2)}`);
  return result.config;
}

function problemAt(problems: readonly ConfigProblem[], path: string): ConfigProblem {
  const found = problems.filter((p) => p.path === path);
  assert.equal(found.length, 1, `expected one problem at ${path}, got ${JSON.stringify(problems, null, 2)}`);
  return found[0] as ConfigProblem;
}

async function thrownBy(promise: Promise<unknown>): Promise<CloudletError> {
  const error = await promise.then(
    () => assert.fail('expected a rejection'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof CloudletError, String(error));
  return error;
}

const severalProblems = (testkit: string) => `
colour: blue
host:
  id: Bad_Host
log:
  level: loud
limits:
  maxMessageBytes: big
plugins:
  - use: ${testkit}
    options:
      greeting: 42
`;

test('config — reports every problem at once, core and plugin options alike', async (t) => {
  const { file, result } = await checkText(t, severalProblems(testkitPath));
  const problems = problemsOf(result);
  assert.deepEqual(problems.map((p) => `${p.path} ${p.code}`).sort(), [
    '(root) CONFIG_INVALID',
    'host.id CONFIG_INVALID',
    'limits.maxMessageBytes CONFIG_INVALID',
    'log.level CONFIG_INVALID',
    'plugins[0].options.greeting PLUGIN_OPTIONS_INVALID',
  ]);
  assert.ok(problems.every((p) => p.file === file));

  assert.deepEqual(problemAt(problems, 'log.level'), {
    code: 'CONFIG_INVALID',
    file,
    path: 'log.level',
    message: 'value not allowed',
    found: '"loud" (string)',
    allowed: LOG_LEVELS,
  });
  const bytes = problemAt(problems, 'limits.maxMessageBytes');
  assert.equal(bytes.found, '"big" (string)');
  assert.equal(bytes.allowed, 'number');
  const hostId = problemAt(problems, 'host.id');
  assert.equal(hostId.found, '"Bad_Host" (string)');
  assert.match(hostId.allowed ?? '', /lowercase letters, digits and "-"/);
  const greeting = problemAt(problems, 'plugins[0].options.greeting');
  assert.equal(greeting.found, '42 (number)');
  assert.equal(greeting.allowed, 'string');
});

test('config — an unknown key lists the keys that are allowed there', async (t) => {
  const { result } = await checkText(t, 'colour: blue\nlog:\n  level: info\n  colour: true\n');
  const problems = problemsOf(result);
  const root = problemAt(problems, '(root)');
  assert.match(root.message, /unknown key "colour"/);
  assert.equal(root.found, 'colour');
  assert.equal(root.allowed, CORE_KEYS);
  assert.equal(problemAt(problems, 'log').allowed, 'level, format');
});

test('config — a mode or kind outside its choices says "value not allowed", lists the choices, and names the one most likely meant', async (t) => {
  // Before: zod's own "Invalid discriminator value. Expected 'bridge' | 'user' | 'none'", with no allowed line.
  const { result } = await checkText(
    t,
    'host:\n  id: h1\ntransport:\n  kind: amqpp\nplugins:\n  - use: qemu-backend\n    options:\n      network:\n        mode: usr\n  - use: qemu-backend-typo-free\n',
  );
  const problems = problemsOf(result);
  assert.deepEqual(
    { ...problemAt(problems, 'transport.kind'), file: undefined },
    { code: 'CONFIG_INVALID', file: undefined, path: 'transport.kind', message: 'value not allowed (did you mean "amqp"?)', found: '"amqpp" (string)', allowed: '"local" | "amqp"' },
  );
  const { result: qemu } = await checkText(t, 'host:\n  id: h1\nplugins:\n  - use: qemu-backend\n    options:\n      network:\n        mode: usr\n');
  const mode = problemAt(problemsOf(qemu), 'plugins[0].options.network.mode');
  assert.deepEqual([mode.message, mode.found, mode.allowed], ['value not allowed (did you mean "user"?)', '"usr" (string)', '"bridge" | "user" | "none"']);
  const { result: far } = await checkText(t, 'host:\n  id: h1\nplugins:\n  - use: qemu-backend\n    options:\n      network:\n        mode: tunnel\n');
  assert.equal(problemAt(problemsOf(far), 'plugins[0].options.network.mode').message, 'value not allowed', 'no guess when nothing is near');
  const { result: missing } = await checkText(t, 'host:\n  id: h1\nplugins:\n  - use: qemu-backend\n    options:\n      network:\n        bridge: br0\n');
  const absent = problemAt(problemsOf(missing), 'plugins[0].options.network.mode');
  assert.deepEqual([absent.message, absent.allowed], ['required key is missing', '"bridge" | "user" | "none"']);
});

test('config — formatProblem prints code, file, path, what was found and what is allowed', async (t) => {
  const { file, result } = await checkText(t, severalProblems(testkitPath));
  const problems = problemsOf(result);
  assert.equal(
    formatProblem(problemAt(problems, 'log.level')),
    `[CONFIG_INVALID] ${file}: log.level: value not allowed\n    found:   "loud" (string)\n    allowed: ${LOG_LEVELS}`,
  );
  const greeting = formatProblem(problemAt(problems, 'plugins[0].options.greeting'));
  assert.equal(greeting, `[PLUGIN_OPTIONS_INVALID] ${file}: plugins[0].options.greeting: wrong type\n    found:   42 (number)\n    allowed: string`);
});

test('config — a YAML syntax error is CONFIG_SYNTAX with its line and column', async (t) => {
  const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', 'host:\n  id: a\nlog:\n  level: info\n\tformat: json\n');
  const error = await thrownBy(readConfigFile(file, {}));
  assert.equal(error.code, 'CONFIG_SYNTAX');
  const { problems } = error.details as { problems: ConfigProblem[] };
  assert.ok(problems.length >= 1);
  assert.deepEqual(
    problems.map((p) => [p.code, p.file, p.path]),
    problems.map(() => ['CONFIG_SYNTAX', file, 'line 5, column 1']),
  );
  assert.match(error.message, new RegExp(`^${file}: line 5, column 1: `));
});

test('config — a key given twice is CONFIG_SYNTAX, not a silent overwrite', async (t) => {
  const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', 'host:\n  id: first\nhost:\n  id: second\n');
  const error = await thrownBy(readConfigFile(file, {}));
  assert.equal(error.code, 'CONFIG_SYNTAX');
  assert.equal((error.details as { problems: ConfigProblem[] }).problems[0]?.path, 'line 3, column 1');
});

test('config — a missing file is CONFIG_NOT_FOUND naming the file', async (t) => {
  const file = join(await tempDir(t), 'nowhere.yaml');
  const error = await thrownBy(readConfigFile(file, {}));
  assert.equal(error.code, 'CONFIG_NOT_FOUND');
  assert.equal(error.message, `config file ${file} does not exist`);
});

test('config — a file that never ends (/dev/zero) or is far too large is CONFIG_NOT_FOUND past 4 MiB, not read whole', async (t) => {
  // Before, it was read whole: /dev/zero filled ~670 MB and failed with "Invalid string length", and
  // /dev/urandom took 1.2 GB and 16 s.
  const zero = await thrownBy(readConfigFile('/dev/zero', {}));
  assert.equal(zero.code, 'CONFIG_NOT_FOUND');
  assert.equal(zero.message, 'config file /dev/zero cannot be read: it is larger than 4 MiB, and a cloudlet config is a few KiB (is it the right file?)');
  const large = join(await tempDir(t), 'large.yaml');
  await writeFile(large, `# ${'x'.repeat(4 * 1024 * 1024)}\nhost:\n  id: big\n`);
  assert.equal((await thrownBy(readConfigFile(large, {}))).code, 'CONFIG_NOT_FOUND');
  const justUnder = join(await tempDir(t), 'under.yaml');
  await writeFile(justUnder, `# ${'x'.repeat(4 * 1024 * 1024 - 100)}\nhost:\n  id: under\n`);
  assert.deepEqual((await readConfigFile(justUnder, {})).data, { host: { id: 'under' } });
});

test('config — a JSON file is read like YAML, problems and all', async (t) => {
  const good = JSON.stringify({ host: { id: 'json-host' }, plugins: [{ use: testkitPath, options: { greeting: 'hi', hasCapacity: true } }] });
  const { result } = await checkText(t, good, { name: 'cloudlet.json' });
  const config = configOf(result);
  assert.equal(config.hostId, 'json-host');
  assert.deepEqual(config.plugins[1]?.options, { greeting: 'hi', hasCapacity: true });

  const bad = JSON.stringify({ log: { level: 'loud' }, plugins: [{ use: testkitPath, options: { greeting: 42 } }] });
  const { file, result: refused } = await checkText(t, bad, { name: 'cloudlet.json' });
  assert.deepEqual(
    problemsOf(refused).map((p) => [p.file, p.path, p.code]),
    [
      [file, 'log.level', 'CONFIG_INVALID'],
      [file, 'plugins[0].options.greeting', 'PLUGIN_OPTIONS_INVALID'],
    ],
  );
});

test('config — environment variables override the file', async (t) => {
  const env = { CLOUDLET_HOST_ID: 'from-env', CLOUDLET_LOG_LEVEL: 'debug', CLOUDLET_LOG_FORMAT: '' };
  const { result } = await checkText(t, 'host:\n  id: from-file\nlog:\n  level: warn\n  format: json\n', { env });
  const config = configOf(result);
  assert.equal(config.hostId, 'from-env');
  assert.equal(config.core.log.level, 'debug');
  assert.equal(config.core.log.format, 'json', 'an empty variable overrides nothing');
});

test('config — an invalid environment value is reported against its variable, not the file', async (t) => {
  const { file, result } = await checkText(t, 'host:\n  id: Bad_Host\n', { env: { CLOUDLET_LOG_LEVEL: 'loud' } });
  const problems = problemsOf(result);
  assert.deepEqual(problemAt(problems, 'log.level'), {
    code: 'CONFIG_INVALID',
    file: 'env CLOUDLET_LOG_LEVEL',
    path: 'log.level',
    message: 'value not allowed',
    found: '"loud" (string)',
    allowed: LOG_LEVELS,
  });
  assert.equal(problemAt(problems, 'host.id').file, file);
});

test('config — a pool override for an unknown message type lists the known types', async (t) => {
  const { file, result } = await checkText(t, `pools:\n  no-such-type:\n    maxThreads: 2\nplugins:\n  - use: ${testkitPath}\n`);
  const problem = problemAt(problemsOf(result), 'pools.no-such-type');
  assert.equal(problem.code, 'CONFIG_INVALID');
  assert.equal(problem.file, file);
  assert.equal(problem.found, 'no-such-type');
  assert.equal(problem.allowed, 'host-info, test.blob, test.crash, test.echo, test.echo-again, test.exit, test.fail, test.in-flight, test.in-flight-blind, test.kill-agent, test.message, test.progress, test.reserve, test.sleep, test.spin, test.thread');
});

test('config — every pool problem is reported in one run, beside a pool value out of range', async (t) => {
  // Before, a value the core schema refused (timeoutMs 0) hid the checks that need the plugins: the unknown
  // type and minThreads above maxThreads came only after the first was fixed.
  const { result } = await checkText(t, `pools:\n  test.sleep:\n    timeoutMs: 0\n  no-such-type:\n    maxThreads: 2\n  host-info:\n    minThreads: 3\nplugins:\n  - use: ${testkitPath}\n`);
  const problems = problemsOf(result);
  assert.deepEqual(
    problems.map((p) => [p.path, p.message]),
    [
      ['pools.test.sleep.timeoutMs', problemAt(problems, 'pools.test.sleep.timeoutMs').message],
      ['pools.host-info', 'minThreads is larger than maxThreads'],
      ['pools.no-such-type', 'no loaded plugin handles message type "no-such-type"'],
    ],
  );
});

test('config — a bound of one is said in the singular: "at least 1 character"', async (t) => {
  // Before: "at least 1 characters".
  const { result } = await checkText(t, `transport:\n  kind: local\n  socket: ""\n`);
  assert.equal(problemAt(problemsOf(result), 'transport.socket').allowed, 'at least 1 character');
});

test('config — a pool override with minThreads above maxThreads is refused', async (t) => {
  // host-info's plugin default is maxThreads 1.
  const { result } = await checkText(t, 'pools:\n  host-info:\n    minThreads: 3\n');
  const problems = problemsOf(result).filter((p) => p.message === 'minThreads is larger than maxThreads');
  assert.equal(problems.length, 1, JSON.stringify(problemsOf(result), null, 2));
  assert.equal(problems[0]?.path, 'pools.host-info');
  assert.equal(problems[0]?.found, 'minThreads 3 (this config), maxThreads 1 (plugin "core"\'s default)');
});

test('config — a pool value out of range is reported with its bound', async (t) => {
  const { result } = await checkText(t, 'pools:\n  host-info:\n    maxThreads: 0\n    tasksPerThread: 65\n');
  const problem = problemAt(problemsOf(result), 'pools.host-info.maxThreads');
  assert.equal(problem.found, '0 (number)');
  assert.equal(problem.allowed, '>= 1');
  const perThread = problemAt(problemsOf(result), 'pools.host-info.tasksPerThread');
  assert.equal(perThread.found, '65 (number)');
  assert.equal(perThread.allowed, '<= 64');
});

test('config — pool settings merge core defaults < plugin defaults < config', async (t) => {
  const yaml = `pools:\n  host-info:\n    timeoutMs: 7000\n  test.echo:\n    maxThreads: 4\nplugins:\n  - use: ${testkitPath}\n`;
  const config = configOf((await checkText(t, yaml)).result);
  assert.deepEqual(config.messages.get('host-info')?.pool, { ...defaultPoolSettings, maxThreads: 1, tasksPerThread: 16, timeoutMs: 7000 });
  assert.deepEqual(config.messages.get('test.echo')?.pool, { ...defaultPoolSettings, maxThreads: 4, tasksPerThread: 16 });
  assert.deepEqual(config.messages.get('test.sleep')?.pool, defaultPoolSettings);
});

test('config — the example config/single-host.yaml loads', async () => {
  const config = configOf(await checkHostConfig(await readConfigFile(join(repoRoot, 'config/single-host.yaml'), {})));
  assert.equal(config.hostId, 'single');
  assert.equal(config.core.transport.kind, 'local');
  assert.deepEqual([...config.messages.keys()], ['host-info']);
  assert.deepEqual(config.messages.get('host-info')?.pool, { ...defaultPoolSettings, maxThreads: 1, tasksPerThread: 16, timeoutMs: 5000 });
});

test('config — every example in config/ loads', async () => {
  const files = (await readdir(join(repoRoot, 'config'))).filter((f) => /\.(ya?ml|json)$/.test(f));
  assert.ok(files.includes('multi-host.yaml'));
  for (const file of files) {
    const checked = await checkHostConfig(await readConfigFile(join(repoRoot, 'config', file), {}));
    assert.equal(checked.ok, true, `${file}: ${JSON.stringify(!checked.ok && checked.problems)}`);
  }
  const multi = configOf(await checkHostConfig(await readConfigFile(join(repoRoot, 'config/multi-host.yaml'), {})));
  assert.equal(multi.core.transport.kind, 'amqp');
  assert.deepEqual(
    multi.plugins.map((p) => p.plugin.name),
    ['core', 'routing-direct', 'routing-fanout'],
  );
});

test('config — CLOUDLET_AMQP_URL supplies the broker URL so the password stays out of the file', async () => {
  const raw = await readConfigFile(join(repoRoot, 'config/multi-host.yaml'), { CLOUDLET_AMQP_URL: 'amqp://cloud:hunter2@broker:5672' });
  const config = configOf(await checkHostConfig(raw));
  assert.equal(config.core.transport.kind === 'amqp' && config.core.transport.url, 'amqp://cloud:hunter2@broker:5672');
});

test('config — `cloudlet config check` says ok and exits 0 for a valid file', async (t) => {
  const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', `host:\n  id: cli-host\nplugins:\n  - use: ${testkitPath}\n`);
  const { code, stdout, stderr } = await runCli(['config', 'check', file], { env: cleanEnv });
  assert.equal(code, 0, stderr);
  assert.match(stdout, /: ok — host "cli-host", transport local, 2 plugin\(s\), 16 message type\(s\)/);
});

test('config — `cloudlet config check` prints every problem and exits 3 for an invalid file', async (t) => {
  const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', severalProblems(testkitPath));
  const { code, stdout, stderr } = await runCli(['config', 'check', file], { env: cleanEnv });
  assert.equal(code, 3, stderr);
  assert.match(stdout, /5 problem\(s\)/);
  for (const line of [
    `[CONFIG_INVALID] ${file}: (root): unknown key "colour"`,
    `[CONFIG_INVALID] ${file}: host.id: wrong format`,
    `[CONFIG_INVALID] ${file}: log.level: value not allowed`,
    `    allowed: ${LOG_LEVELS}`,
    `[CONFIG_INVALID] ${file}: limits.maxMessageBytes: wrong type`,
    `[PLUGIN_OPTIONS_INVALID] ${file}: plugins[0].options.greeting: wrong type`,
    '    found:   42 (number)',
  ]) {
    assert.ok(stdout.includes(line), `missing ${JSON.stringify(line)} in:\n${stdout}`);
  }
});

test('config — `cloudlet config check --json` prints the problems as parseable JSON', async (t) => {
  const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', severalProblems(testkitPath));
  const { code, stdout } = await runCli(['config', 'check', file, '--json'], { env: cleanEnv });
  assert.equal(code, 3);
  const report = JSON.parse(stdout) as { ok: boolean; file: string; problems: ConfigProblem[] };
  assert.equal(report.ok, false);
  assert.equal(report.problems.length, 5);
  assert.deepEqual(
    report.problems.find((p) => p.path === 'plugins[0].options.greeting'),
    { code: 'PLUGIN_OPTIONS_INVALID', file, path: 'plugins[0].options.greeting', message: 'wrong type', found: '42 (number)', allowed: 'string' },
  );
});

test('config — `cloudlet config check` exits 3 with CONFIG_SYNTAX or CONFIG_NOT_FOUND', async (t) => {
  const dir = await tempDir(t);
  const broken = await writeConfig(dir, 'broken.yaml', 'log:\n  level: info\n\tformat: json\n');
  const syntax = await runCli(['config', 'check', broken], { env: cleanEnv });
  assert.equal(syntax.code, 3);
  assert.match(syntax.stderr, /^error \[CONFIG_SYNTAX\]: 1 problem\(s\):\n/);
  assert.ok(syntax.stderr.includes(`[CONFIG_SYNTAX] ${broken}: line 3, column 1: Tabs are not allowed`), syntax.stderr);

  const missing = await runCli(['config', 'check', join(dir, 'nowhere.yaml'), '--json'], { env: cleanEnv });
  assert.equal(missing.code, 3);
  assert.equal((JSON.parse(missing.stdout) as { error: { code: string } }).error.code, 'CONFIG_NOT_FOUND');
});

test(
  'config — a pool override with minThreads above maxThreads is the only problem reported for that type',
  async (t) => {
    const { result } = await checkText(t, 'pools:\n  host-info:\n    minThreads: 3\n');
    assert.deepEqual(
      problemsOf(result).map((p) => `${p.path}: ${p.message}`),
      ['pools.host-info: minThreads is larger than maxThreads'],
    );
  },
);

test(
  'config — CLOUDLET_SOCKET works with a config that has no transport section',
  async (t) => {
    const { result } = await checkText(t, 'host:\n  id: a\n', { env: { CLOUDLET_SOCKET: '/tmp/cloudlet-env.sock' } });
    assert.deepEqual(configOf(result).core.transport, { kind: 'local', socket: '/tmp/cloudlet-env.sock' });
  },
);

test(
  'config — an override under a section that is not a mapping is never written at the top level',
  async (t) => {
    const { result } = await checkText(t, 'host: ~\nlog: verbose\n', { env: { CLOUDLET_HOST_ID: 'a', CLOUDLET_LOG_LEVEL: 'debug' } });
    const problems = problemsOf(result);
    assert.deepEqual(
      problems.filter((p) => p.path === '(root)'),
      [],
      'no "unknown key id/level" at the top level: the file never had those keys',
    );
  },
);

test('config — CLOUDLET_AMQP_URL does not break a host whose file names the local transport', async (t) => {
  const { result } = await checkText(t, 'transport:\n  kind: local\n', { env: { CLOUDLET_AMQP_URL: 'amqp://u:p@broker' } });
  assert.deepEqual(configOf(result).core.transport, { kind: 'local' });
});

test('config — CLOUDLET_AMQP_PREFIX sets the prefix of a RabbitMQ transport and never makes one', async (t) => {
  // Before, the prefix alone made a `kind: amqp` transport without a URL out of a local host's file, and the
  // file was blamed: "transport.url: required key is missing".
  const alone = await checkText(t, 'host:\n  id: h1\n', { env: { CLOUDLET_AMQP_PREFIX: 'prod' } });
  assert.equal(configOf(alone.result).core.transport.kind, 'local');
  const local = await checkText(t, 'transport:\n  kind: local\n', { env: { CLOUDLET_AMQP_PREFIX: 'prod' } });
  assert.deepEqual(configOf(local.result).core.transport, { kind: 'local' });
  const withUrl = await checkText(t, 'host:\n  id: h1\n', { env: { CLOUDLET_AMQP_URL: 'amqp://u:p@broker', CLOUDLET_AMQP_PREFIX: 'prod' } });
  assert.deepEqual([configOf(withUrl.result).core.transport.kind, (configOf(withUrl.result).core.transport as { prefix: string }).prefix], ['amqp', 'prod']);
  const inFile = await checkText(t, 'transport:\n  kind: amqp\n  url: amqp://broker\n  prefix: dev\n', { env: { CLOUDLET_AMQP_PREFIX: 'prod' } });
  assert.equal((configOf(inFile.result).core.transport as { prefix: string }).prefix, 'prod');
});

test('config — a broker URL the schema refuses is shown without its password, malformed or too long', async (t) => {
  // Before: `found: "amqp:/cloudlet:S3cretPass@broker.lan:5672"`, in `config check`, the agent's start-up
  // error (journald under systemd) and `--json` details, although logs mask passwords in URLs.
  const urls = ['amqp:/cloudlet:S3cretPass@broker.lan:5672', `amqp://cloudlet:S3cretPass@broker.lan:5672/${'v'.repeat(2_100)}`];
  for (const url of urls) {
    for (const where of ['env', 'file'] as const) {
      const text = where === 'file' ? `transport:\n  kind: amqp\n  url: "${url}"\n` : 'host:\n  id: h1\n';
      const { result } = await checkText(t, text, where === 'env' ? { env: { CLOUDLET_AMQP_URL: url } } : {});
      const problems = problemsOf(result);
      assert.ok(problems.some((problem) => problem.path === 'transport.url'), JSON.stringify(problems));
      assert.doesNotMatch(JSON.stringify(problems), /S3cretPass/, `${where}: ${url.slice(0, 50)}`);
      assert.doesNotMatch(problems.map(formatProblem).join('\n'), /S3cretPass/);
    }
  }
});

test('config — YAML aliases that cannot be expanded (a billion-laughs bomb, an unknown anchor) are CONFIG_SYNTAX naming the file', async (t) => {
  // Before: INTERNAL (exit 70) with yaml's bare message; under systemd, RestartPreventExitStatus=3 did not
  // stop the unit from restarting every 5 s for ever.
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]', ...'bcdefghi'.split('').map((name, i) => `${name}: &${name} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(', ')}]`)].join('\n');
  for (const [text, message] of [
    [`${bomb}\n`, /alias/i],
    ['x: *nowhere\n', /nowhere/],
  ] as const) {
    const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', text);
    await assert.rejects(readConfigFile(file, {}), (error: unknown) => {
      assert.ok(error instanceof CloudletError, String(error));
      assert.equal(error.code, 'CONFIG_SYNTAX', error.message);
      assert.ok(error.message.includes(file), error.message);
      assert.match(error.message, message);
      const problems = (error.details as { problems: ConfigProblem[] }).problems;
      assert.equal(problems[0]?.file, file);
      return true;
    });
  }
});

test('config — a broker URL amqplib cannot read (port not a number, no host) is refused at check, not at connect', async (t) => {
  // Before: `config check` said ok, and the agent failed at start with BROKER_UNAVAILABLE (exit 4), "Expected
  // amqp: or amqps: as the protocol", which blamed the broker for the file's mistake.
  for (const url of ['amqp://broker:notaport', 'amqp://broker:99999', 'amqp://', 'amqps://:5671/v']) {
    const { result } = await checkText(t, `transport:\n  kind: amqp\n  url: "${url}"\n`);
    const problem = problemAt(problemsOf(result), 'transport.url');
    assert.match(`${problem.message} ${problem.allowed ?? ''}`, /host/, url);
  }
  for (const url of ['amqp://broker', 'amqps://u:p@broker.lan:5671/prod', 'amqp://[::1]:5672']) {
    configOf((await checkText(t, `transport:\n  kind: amqp\n  url: "${url}"\n`)).result);
  }
});

test('config — a number YAML reads as infinite or NaN is "not a finite number", not "wrong type: null (number)"', async (t) => {
  for (const [text, shown] of [['1e400', 'Infinity'], ['.nan', 'NaN'], ['-.inf', '-Infinity']]) {
    const { result } = await checkText(t, `shutdown:\n  graceMs: ${text}\n`);
    const problem = problemAt(problemsOf(result), 'shutdown.graceMs');
    assert.equal(problem.message, 'not a finite number', text);
    assert.equal(problem.found, `${shown} (number)`);
    assert.equal(problem.allowed, 'a finite number');
  }
});

test('config — YAML tags that make no JSON value (!!set, !!omap, !!binary, !!timestamp) and a __proto__ key are CONFIG_SYNTAX at their path', async (t) => {
  // Before: `host: !!set {a, b}` passed the check (a Set is an object, with no keys to refuse), and
  // `pools: {__proto__: {maxThreads: 1000}}` passed without a word.
  for (const [text, path] of [
    ['host: !!set {a, b}\n', 'host'],
    ['shutdown:\n  graceMs: !!timestamp 2020-01-01\n', 'shutdown.graceMs'],
    ['plugins:\n  - use: testkit\n    options: !!omap [a: 1]\n', 'plugins[0].options'],
    ['state:\n  dir: !!binary aGVsbG8=\n', 'state.dir'],
    ['pools:\n  __proto__:\n    maxThreads: 1000\n', 'pools.__proto__'],
  ] as const) {
    const file = await writeConfig(await tempDir(t), 'cloudlet.yaml', text);
    await assert.rejects(readConfigFile(file, {}), (error: unknown) => {
      assert.ok(error instanceof CloudletError, String(error));
      assert.equal(error.code, 'CONFIG_SYNTAX', `${text}: ${error.message}`);
      const problems = (error.details as { problems: ConfigProblem[] }).problems;
      assert.deepEqual(problems.map((problem) => problem.path), [path], text);
      return true;
    });
  }
});

test('config — key files are read at check: a missing, open or wrong one is a problem at its setting, a good one passes', async (t) => {
  // Before, config check passed such a config; the agent then failed at start, and a client at its first command.
  const dir = await tempDir(t);
  const good = join(dir, 'good.key');
  await writeFile(good, generateKey().privateKeyPem, { mode: 0o600 });
  const open = join(dir, 'open.key');
  await writeFile(open, generateKey().privateKeyPem, { mode: 0o644 });
  const publicOnly = join(dir, 'public.key');
  await writeFile(publicOnly, `-----BEGIN PUBLIC KEY-----\n${generateKey().publicKey}\n-----END PUBLIC KEY-----\n`, { mode: 0o600 });
  const missing = join(dir, 'missing.key');
  const configWith = (hostKeyFile: string, clientKeyFile: string) => `security:\n  hostKeyFile: ${hostKeyFile}\n  clientKeyFile: ${clientKeyFile}\n`;

  configOf((await checkText(t, configWith(good, good))).result);

  const { file, result } = await checkText(t, configWith(missing, open));
  const problems = problemsOf(result);
  assert.equal(problems.length, 2, JSON.stringify(problems, null, 2));
  const host = problemAt(problems, 'security.hostKeyFile');
  assert.equal(host.code, 'CONFIG_NOT_FOUND');
  assert.equal(host.file, file);
  assert.equal(host.found, missing);
  assert.match(host.message, /key file .*missing\.key cannot be read/);
  const client = problemAt(problems, 'security.clientKeyFile');
  assert.equal(client.code, 'CONFIG_INSECURE');
  assert.match(client.message, /chmod 600/);

  const wrong = problemAt(problemsOf((await checkText(t, configWith(good, publicOnly))).result), 'security.clientKeyFile');
  assert.equal(wrong.code, 'CONFIG_INVALID');
  assert.match(wrong.message, /holds no private key/);

  const check = await runCli(['config', 'check', file]);
  assert.equal(check.code, 3, check.stderr);
  assert.match(check.stdout, /\[CONFIG_NOT_FOUND\] .*: security\.hostKeyFile: key file/);
});
