import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { mkdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { repoRoot, runCli, spawnAgent, tempDir, testkitPath, until, writeConfig } from '../helpers.ts';

async function agentWithTestkit(t: TestContext, extra = '') {
  const dir = await tempDir(t);
  const socket = join(dir, 'agent.sock');
  const config = await writeConfig(
    dir,
    'cloudlet.yaml',
    `host:\n  id: cli-host\ntransport:\n  kind: local\n  socket: ${socket}\nshutdown:\n  graceMs: 5000\nplugins:\n  - use: ${testkitPath}\n    options:\n      greeting: howdy\n${extra}`,
  );
  const agent = await spawnAgent(t, config);
  return { dir, socket, config, agent };
}

test('cli — call host-info prints the result and exits 0; --json prints the reply envelope', async (t) => {
  const { config } = await agentWithTestkit(t);
  const human = await runCli(['call', 'host-info', '--config', config]);
  assert.equal(human.code, 0, human.stderr);
  assert.equal((JSON.parse(human.stdout) as { host: string }).host, 'cli-host');
  const machine = await runCli(['call', 'host-info', '--config', config, '--json']);
  assert.equal(machine.code, 0);
  const reply = JSON.parse(machine.stdout) as { kind: string; ok: boolean; host: string; result: { plugins: { name: string }[] } };
  assert.equal(reply.kind, 'reply');
  assert.equal(reply.ok, true);
  assert.deepEqual(
    reply.result.plugins.map((p) => p.name),
    ['core', 'testkit'],
  );
});

test('cli — payloads reach the handler and progress goes to stderr', async (t) => {
  const { config } = await agentWithTestkit(t);
  const echo = await runCli(['call', 'test.echo', '--config', config, '--payload', '{"value":{"a":[1,2]}}']);
  assert.equal(echo.code, 0, echo.stderr);
  assert.deepEqual((JSON.parse(echo.stdout) as { value: unknown; greeting: string }).value, { a: [1, 2] });
  const progress = await runCli(['call', 'test.progress', '--config', config, '--payload', '{"steps":2}']);
  assert.equal(progress.code, 0);
  assert.match(progress.stderr, /step \{"step":1,"of":2\}[\s\S]*step \{"step":2,"of":2\}/);
  assert.deepEqual(JSON.parse(progress.stdout), { steps: 2 });
});

test('cli — exit codes: error reply 1, usage 2, unreachable 4', async (t) => {
  const { config, dir } = await agentWithTestkit(t);
  const unknown = await runCli(['call', 'no-such-type', '--config', config]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /error \[UNKNOWN_TYPE\]/);
  assert.match(unknown.stderr, /hint: /);
  const unknownJson = await runCli(['call', 'no-such-type', '--config', config, '--json']);
  assert.equal(unknownJson.code, 1);
  assert.equal((JSON.parse(unknownJson.stdout) as { error: { code: string } }).error.code, 'UNKNOWN_TYPE');

  const invalid = await runCli(['call', 'test.sleep', '--config', config, '--payload', '{"ms":-1}']);
  assert.equal(invalid.code, 1);
  assert.match(invalid.stderr, /INVALID_PAYLOAD[\s\S]*payload\.ms/);

  const badJson = await runCli(['call', 'host-info', '--config', config, '--payload', '{nope']);
  assert.equal(badJson.code, 2);
  assert.match(badJson.stderr, /--payload is not valid JSON/);
  const badFlag = await runCli(['call', 'host-info', '--frobnicate']);
  assert.equal(badFlag.code, 2);
  const badTimeout = await runCli(['call', 'host-info', '--timeout', 'soon']);
  assert.equal(badTimeout.code, 2);
  const noCommand = await runCli(['launch']);
  assert.equal(noCommand.code, 2);
  assert.match(noCommand.stderr, /unknown command "launch"/);

  const unreachable = await runCli(['call', 'host-info', '--config', config, '--socket', join(dir, 'nobody.sock')]);
  assert.equal(unreachable.code, 4);
  assert.match(unreachable.stderr, /AGENT_UNREACHABLE[\s\S]*nobody\.sock/);
});

test('cli — the agent deadline answers a slow call with DEADLINE_EXCEEDED, exit 5 (time ran out)', async (t) => {
  const { config } = await agentWithTestkit(t);
  const slow = await runCli(['call', 'test.sleep', '--config', config, '--payload', '{"ms":10000}', '--timeout', '400', '--json']);
  assert.equal(slow.code, 5, slow.stderr);
  assert.equal((JSON.parse(slow.stdout) as { error: { code: string } }).error.code, 'DEADLINE_EXCEEDED');
});

test('cli — plugins lists loaded plugins, their message types and pool settings', async (t) => {
  const dir = await tempDir(t);
  const config = await writeConfig(dir, 'cloudlet.yaml', `plugins:\n  - use: ${testkitPath}\npools:\n  test.echo:\n    maxThreads: 3\n`);
  const human = await runCli(['plugins', '--config', config]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /testkit\s+1\.2\.3\s+test\.echo\s+0-3 threads/);
  assert.match(human.stdout, /core\s+1\.0\.0\s+host-info/);
  const machine = await runCli(['plugins', '--config', config, '--json']);
  const parsed = JSON.parse(machine.stdout) as { plugins: { name: string; messages: { type: string; pool: { maxThreads: number } }[] }[] };
  const testkit = parsed.plugins.find((p) => p.name === 'testkit');
  assert.equal(testkit?.messages.find((m) => m.type === 'test.echo')?.pool.maxThreads, 3);
});

test('cli — SIGTERM lets the in-flight call finish, then the agent exits 0', async (t) => {
  const { config, agent } = await agentWithTestkit(t, 'log:\n  level: debug\n');
  const call = runCli(['call', 'test.sleep', '--config', config, '--payload', '{"ms":1500}']);
  // Signal only once the agent has taken the call (a loaded machine starts the CLI slowly).
  const deadline = Date.now() + 15_000;
  while (!/"type":"test\.sleep".*"msg":"accepted"/.test(agent.output())) {
    assert.ok(Date.now() < deadline, agent.output());
    await new Promise((r) => setTimeout(r, 20));
  }
  agent.child.kill('SIGTERM');
  const result = await call;
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(JSON.parse(result.stdout), { slept: 1500 });
  assert.equal(await agent.exited, 0);
  assert.match(agent.output(), /"msg":"stopped"/);
});

test('cli — SIGHUP (the terminal went away) shuts the agent down like SIGTERM, and it exits 0', async (t) => {
  // Before, SIGHUP was not handled: Node's default killed the agent at once, with no stop hook (a managed
  // dnsmasq then outlived it).
  const { agent } = await agentWithTestkit(t);
  agent.child.kill('SIGHUP');
  assert.equal(await agent.exited, 0, agent.output());
  assert.match(agent.output(), /"signal":"SIGHUP"|"reason":"SIGHUP"/);
  assert.match(agent.output(), /"msg":"stopped"/);
});

/**
 * An agent process (not waited for: these tests signal it while it starts) with one fixture plugin that
 * notes its hooks in a marker file; its output, and its exit code and signal once it ends.
 */
async function startingAgent(t: TestContext, fixture: string, options: string) {
  const dir = await tempDir(t);
  const marker = join(dir, 'hooks.log');
  const plugin = fileURLToPath(new URL(`../fixtures/plugins/${fixture}/index.ts`, import.meta.url));
  const config = await writeConfig(
    dir,
    'cloudlet.yaml',
    `host:\n  id: cli-host\ntransport:\n  kind: local\n  socket: ${join(dir, 'agent.sock')}\nplugins:\n  - use: ${plugin}\n    options:\n      marker: ${marker}\n${options}`,
  );
  const child = spawn(process.execPath, [join(repoRoot, 'core/cli/bin.js'), 'agent', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CLOUDLET_LOG_FORMAT: 'json' } });
  t.after(() => child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise<[number | null, string | null]>((resolve) => child.on('exit', (code, signal) => resolve([code, signal])));
  const hooks = async () => (await readFile(marker, 'utf8').catch(() => '')).trim().split('\n');
  return { child, exited, hooks, output: () => output };
}

test('cli — SIGTERM while the agent starts: it finishes starting, runs the stop hooks and exits 0', async (t) => {
  // Before, the signal handlers came only after start: a SIGTERM during a slow init (systemd stopping the
  // unit) killed the process outright, and no stop hook ran (a managed dnsmasq was left running).
  const agent = await startingAgent(t, 'slow-start', '      initMs: 1500\n');
  await until(async () => (await agent.hooks()).includes('init-begun'), 20_000);
  agent.child.kill('SIGTERM');
  assert.deepEqual(await agent.exited, [0, null]);
  assert.deepEqual(await agent.hooks(), ['init-begun', 'init-done', 'stop']);
});

test('cli — a start hook that never finishes: the agent waits, names the plugin on SIGTERM, and a second signal ends it', async (t) => {
  // Before, a start hook awaiting a promise nothing would settle let Node end the agent with status 13
  // and not a word; a hook that held something open hung the start with nothing naming the plugin.
  const agent = await startingAgent(t, 'start-hangs', '');
  await until(async () => (await agent.hooks()).includes('start-begun'), 20_000);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  assert.equal(agent.child.exitCode, null, `the agent exited while its start hook was pending:\n${agent.output()}`);
  agent.child.kill('SIGTERM');
  await until(async () => agent.output().includes('signal during start-up'), 10_000);
  assert.match(agent.output(), /signal during start-up: stopping once the start is done, or now if it waits for another agent to stop \(waiting for plugin \\"start-hangs\\" start hook, running for \d+ s; a second signal exits now\)/);
  agent.child.kill('SIGTERM');
  assert.deepEqual(await agent.exited, [130, null]);
});

test('cli — SIGTERM while a start waits for a stopping agent (its socket path or its folder): the wait ends, nothing is taken, exit 0', { timeout: 90_000 }, async (t) => {
  // Before, the signal was kept until the wait ended: up to the successor's wait (drain, cancel grace, each
  // stop hook's limit, 30 s more), minutes for systemd or an operator at the terminal to sit through.
  const dir = await tempDir(t);
  const folder = join(dir, 'state');
  await mkdir(folder);
  const plugin = (name: string) => fileURLToPath(new URL(`../fixtures/plugins/${name}/index.ts`, import.meta.url));
  const config = (name: string, socket: string) =>
    writeConfig(
      dir,
      `${name}.yaml`,
      `host:\n  id: ${name}\ntransport:\n  kind: local\n  socket: ${join(dir, socket)}\nshutdown:\n  graceMs: 0\n  stopHookMs: 120000\nplugins:\n  - use: ${plugin('folder-holder')}\n    options:\n      folder: ${folder}\n  - use: ${plugin('stop-hangs')}\n`,
    );
  // The old agent stops, and stays stopping: its stop hook hangs (for stopHookMs), and it holds the socket
  // path's lock and the folder until after its stop hooks.
  const old = await spawnAgent(t, await config('old', 'agent.sock'));
  old.child.kill('SIGTERM');
  await until(() => old.output().includes(`"msg":"shutting down"`), 10_000);

  const waiters = [
    { what: 'socket path', config: await config('same-socket', 'agent.sock'), waitingFor: `the agent stopping on ${join(dir, 'agent.sock')} to finish` },
    { what: 'folder', config: await config('same-folder', 'other.sock'), waitingFor: `the agent of host \\"old\\" (process ${old.child.pid}) to stop and release ${folder}` },
  ];
  for (const waiter of waiters) {
    const child = spawn(process.execPath, [join(repoRoot, 'core/cli/bin.js'), 'agent', '--config', waiter.config], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CLOUDLET_LOG_FORMAT: 'json' } });
    t.after(() => child.kill('SIGKILL'));
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await until(() => /is stopping .*waiting up to/.test(output), 20_000);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, output);
    assert.equal(old.child.exitCode, null, 'the old agent is still stopping: the wait was called off, it did not run out');
    assert.ok(output.includes(`stopped without starting: after the SIGTERM, the start was called off at its wait for ${waiter.waitingFor}`), `${waiter.what}:\n${output}`);
    assert.doesNotMatch(output, /ready as host/, waiter.what);
  }
});

test('cli — an agent that cannot start (invalid config) exits 3 and names the problem', async (t) => {
  const dir = await tempDir(t);
  const config = await writeConfig(dir, 'bad.yaml', 'log:\n  level: loud\n');
  const result = await runCli(['agent', '--config', config]);
  assert.equal(result.code, 3);
  assert.match(result.stderr, /log\.level/);
});

test('cli — npm start runs an agent and npx cloudlet call host-info reaches it', async (t) => {
  const dir = await tempDir(t);
  const socket = join(dir, 'start.sock');
  const env = { ...process.env, CLOUDLET_SOCKET: socket, CLOUDLET_LOG_FORMAT: 'json', CLOUDLET_CONFIG: '' };
  const npmStart = spawn('npm', ['start'], { cwd: repoRoot, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  npmStart.stdout.on('data', (d) => (output += d));
  npmStart.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => npmStart.on('exit', resolve));
  t.after(async () => {
    try {
      process.kill(-npmStart.pid!, 'SIGTERM');
    } catch {
      // already gone
    }
    await exited;
  });
  const deadline = Date.now() + 20_000;
  while (!output.includes('ready as host')) {
    assert.ok(Date.now() < deadline, `npm start did not get ready:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const result = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
    const npx = spawn('npx', ['--no-install', 'cloudlet', 'call', 'host-info'], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    npx.stdout.on('data', (d) => (stdout += d));
    npx.on('exit', (code) => resolve({ code, stdout }));
  });
  assert.equal(result.code, 0);
  assert.equal((JSON.parse(result.stdout) as { host: string }).host, 'single');
});
