/**
 * The operator's CLI end to end against real agent processes: init, install-service, hosts, sweep, doctor,
 * metrics and health, on the local transport and on RabbitMQ. (VM commands against real QEMU: ops-cli-vm.test.ts.)
 */
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, realpath, stat, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import test, { type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cliBin, runCli, spawnAgent, tempDir, testkitPath, writeConfig } from '../helpers.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';
import { startRabbitNode } from '../support/rabbit-node.ts';

// The metrics plugin reads the hook context's `agent`, added in core API 1.5.

const sweepStub = fileURLToPath(new URL('../fixtures/plugins/sweep-stub/index.ts', import.meta.url));

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function localAgent(t: TestContext, pluginsYaml: string) {
  const dir = await tempDir(t);
  const config = await writeConfig(dir, 'cloudlet.yaml', `host:\n  id: ops-host\ntransport:\n  kind: local\n  socket: ${join(dir, 'agent.sock')}\nstate:\n  dir: ${join(dir, 'state')}\nplugins:\n${pluginsYaml}`);
  const agent = await spawnAgent(t, config);
  return { dir, config, agent };
}

function json<T>(result: { stdout: string; stderr: string }): T {
  try {
    return JSON.parse(result.stdout) as T;
  } catch {
    throw new Error(`not JSON on stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
  }
}

test('init — writes a commented config that config check accepts, and never overwrites without --force', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'etc', 'cloudlet.yaml');
  const args = ['init', '--output', file, '--host-id', 'ops1', '--bridge', 'br7', '--state-dir', join(dir, 'state'), '--ip-discovery', 'guest-agent,arp'];
  const written = await runCli([...args, '--json']);
  assert.equal(written.code, 0, written.stderr);
  assert.deepEqual(json(written), { ok: true, file, host: 'ops1', transport: 'local', plugins: ['qemu-backend', 'ip-discovery-guest-agent', 'ip-discovery-arp'] });
  const text = await readFile(file, 'utf8');
  assert.match(text, /^# cloudlet host config for "ops1"/);
  assert.match(text, /bridge: br7 +# must exist: ip link add br7 type bridge/);
  assert.equal((await stat(file)).mode & 0o777, 0o640);
  const check = await runCli(['config', 'check', file]);
  assert.equal(check.code, 0, check.stdout + check.stderr);

  const again = await runCli(args);
  assert.equal(again.code, 2);
  assert.match(again.stderr, /exists; use --force/);
  assert.equal(await readFile(file, 'utf8'), text);
  assert.equal((await runCli([...args, '--force'])).code, 0);

  const amqpFile = join(dir, 'amqp.yaml');
  const amqp = await runCli(['init', '--output', amqpFile, '--host-id', 'ops2', '--url', 'amqp://cloudlet@broker.lan:5672', '--images-dir', join(dir, 'images')]);
  assert.equal(amqp.code, 0, amqp.stderr);
  assert.match(amqp.stdout, /transport amqp, plugins: routing-direct, routing-fanout, qemu-backend, ip-discovery-guest-agent/);
  assert.equal((await runCli(['config', 'check', amqpFile])).code, 0);

  const bad = await runCli(['init', '--output', join(dir, 'x.yaml'), '--ip-discovery', 'dnsmasq']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--lease-file FILE .*, or --dhcp-range START,END with --bridge BR/);

  // Managed dnsmasq (the agent runs it on the bridge): before, init could not write it at all.
  const managedFile = join(dir, 'managed.yaml');
  const managed = await runCli(['init', '--output', managedFile, '--host-id', 'ops3', '--bridge', 'br7', '--state-dir', join(dir, 'state'), '--ip-discovery', 'dnsmasq,guest-agent', '--dhcp-range', '10.9.0.100,10.9.0.200']);
  assert.equal(managed.code, 0, managed.stderr);
  assert.equal((await runCli(['config', 'check', managedFile])).code, 0);
  const plugins = (parse(await readFile(managedFile, 'utf8')) as { plugins: { use: string; options?: unknown }[] }).plugins;
  assert.deepEqual(plugins.find((p) => p.use === 'ip-discovery-dnsmasq')?.options, {
    leaseFile: join(dir, 'state', 'dnsmasq', 'br7.leases'),
    managed: { bridge: 'br7', rangeStart: '10.9.0.100', rangeEnd: '10.9.0.200', leaseTime: '1h' },
  });
  for (const [flags, message] of [
    [['--ip-discovery', 'dnsmasq', '--dhcp-range', '10.9.0.100,10.9.0.200'], /give the bridge with --bridge BR/],
    [['--bridge', 'br7', '--ip-discovery', 'dnsmasq', '--dhcp-range', '10.9.0.100-10.9.0.200'], /--dhcp-range takes two IPv4 addresses, START,END/],
    [['--bridge', 'br7', '--ip-discovery', 'arp', '--dhcp-range', '10.9.0.100,10.9.0.200'], /add dnsmasq to --ip-discovery/],
  ] as const) {
    const refused = await runCli(['init', '--output', join(dir, 'y.yaml'), ...flags]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, message);
  }
  // A range backwards is the plugin's own check, run on the text before it is written (exit 3, nothing written).
  const backwards = await runCli(['init', '--output', join(dir, 'z.yaml'), '--bridge', 'br7', '--ip-discovery', 'dnsmasq', '--dhcp-range', '10.9.0.200,10.9.0.100']);
  assert.equal(backwards.code, 3, backwards.stderr);
  assert.match(backwards.stderr, /managed\.rangeEnd: rangeEnd must not be below rangeStart/);
  await assert.rejects(readFile(join(dir, 'z.yaml')), { code: 'ENOENT' });
});

test('install-service — warns about what would keep the service from starting: hidden images, missing or relative folders, a quote in a path', async (t) => {
  // Found in review: an images folder under /home or /tmp was not warned about (ProtectHome hides it); a
  // ReadWritePaths folder that does not exist is skipped by systemd, and the agent then cannot make it;
  // a relative state.dir became a relative ReadWritePaths; a ' in the config path made the unit unloadable.
  const dir = await tempDir(t, "cloudlet-o'brien-");
  const config = join(dir, 'cloudlet.yaml');
  assert.equal((await runCli(['init', '--output', config, '--host-id', 'svc', '--state-dir', "/srv/cloudlet-o'brien%x", '--images-dir', join(dir, 'images')])).code, 0);
  const text = await readFile(config, 'utf8');
  // A relative state.dir, and the socket under /var/run (a link to /run: the unit's RuntimeDirectory= makes it).
  const edited = text.replace(/^  dir: "\/srv\/cloudlet-o'brien%x"/m, '  dir: relative-state').replace(/^  kind: local .*$/m, '  kind: local\n  socket: /var/run/cloudlet/agent.sock');
  assert.notEqual(edited, text);
  await writeFile(config, edited, { mode: 0o640 });
  const result = json<{ readWritePaths: string[]; notes: string[] }>(await runCli(['install-service', '--config', config, '--output', join(dir, 'unit.service'), '--json']));
  const notes = result.notes.join('\n');
  assert.match(notes, new RegExp(`warning: ${join(dir, 'images').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is under /home, /root or /tmp`));
  assert.match(notes, /warning: "relative-state" is a relative path: the service runs in \/, so it means \/relative-state/);
  // The advice is for a shell: quoted for one (not with systemd's %% for %).
  assert.ok(notes.includes(`warning: /srv/cloudlet-o'brien%x/qemu does not exist; create it before starting the service (install -d -m 0750 '/srv/cloudlet-o'\\''brien%x/qemu')`), notes);
  assert.ok(result.readWritePaths.includes('/relative-state'), JSON.stringify(result.readWritePaths));
  if ((await realpath('/var/run').catch(() => '')) === '/run') {
    assert.ok(!result.readWritePaths.some((path) => path.includes('/run/cloudlet')), JSON.stringify(result.readWritePaths));
    assert.doesNotMatch(notes, /run\/cloudlet/);
  }
  const unit = await readFile(join(dir, 'unit.service'), 'utf8');
  assert.ok(unit.includes(`--config "${config}"`), unit.split('\n').find((line) => line.startsWith('ExecStart=')));
  // systemd-analyze comes with setup.sh (package systemd); its absence fails here rather than skip the check.
  const verifyQuoted = spawnSync('systemd-analyze', ['verify', join(dir, 'unit.service')], { encoding: 'utf8' });
  assert.equal(verifyQuoted.error, undefined, 'systemd-analyze is missing: run scripts/setup.sh');
  assert.doesNotMatch(verifyQuoted.stderr, /Unbalanced quoting|fatal error/);
  // A state folder reached through a link in /tmp is hidden from the service as written, wherever it leads.
  const linked = join(dir, 'state-link');
  await symlink('/srv', linked);
  await writeFile(config, edited.replace('  dir: relative-state', `  dir: ${linked}`), { mode: 0o640 });
  const viaLink = json<{ readWritePaths: string[]; notes: string[] }>(await runCli(['install-service', '--config', config, '--output', join(dir, 'unit2.service'), '--json']));
  assert.ok(viaLink.notes.some((note) => note.startsWith(`warning: ${linked} is under /home, /root or /tmp`)), viaLink.notes.join('\n'));
  assert.ok(!viaLink.readWritePaths.includes('/srv'), JSON.stringify(viaLink.readWritePaths));
});

test('install-service — writes a hardened unit with this installation’s paths and the config’s folders', async (t) => {
  const dir = await tempDir(t);
  const config = join(dir, 'cloudlet.yaml');
  // Folders outside /var/lib/cloudlet must become ReadWritePaths (they are only named, never created).
  assert.equal((await runCli(['init', '--output', config, '--host-id', 'svc', '--state-dir', '/srv/cloudlet-ops-test'])).code, 0);
  const unitFile = join(dir, 'cloudlet.service');
  const written = await runCli(['install-service', '--config', config, '--output', unitFile, '--json']);
  assert.equal(written.code, 0, written.stderr);
  const result = json<{ ok: boolean; file: string; execStart: string; readWritePaths: string[]; notes: string[] }>(written);
  // The config here is under /tmp, which the unit hides: said, not silently written into a unit that fails.
  assert.ok(result.notes.some((n) => n.startsWith(`warning: the config (${config}) is under /home, /root or /tmp`)), JSON.stringify(result.notes));
  assert.deepEqual(result.readWritePaths, ['/srv/cloudlet-ops-test', '/srv/cloudlet-ops-test/qemu']);
  const unit = await readFile(unitFile, 'utf8');
  assert.ok(unit.includes(`ExecStart=${process.execPath} ${cliBin} agent --config ${config}\n`), unit);
  for (const line of [
    'Restart=on-failure',
    'KillMode=process',
    'RestartPreventExitStatus=3',
    'Environment=CLOUDLET_LOG_FORMAT=json',
    'StandardOutput=journal',
    'ProtectSystem=strict',
    'NoNewPrivileges=yes',
    'DevicePolicy=closed',
    'DeviceAllow=/dev/kvm rw',
    'DeviceAllow=/dev/net/tun rw',
    'ReadWritePaths=-/srv/cloudlet-ops-test',
    'StateDirectory=cloudlet',
  ]) {
    assert.ok(unit.split('\n').includes(line), `missing "${line}" in\n${unit}`);
  }
  assert.match(unit, /^CapabilityBoundingSet=.*\bCAP_NET_ADMIN\b/m);
  assert.match(unit, /^RestrictAddressFamilies=.*AF_NETLINK/m);
  const verify = spawnSync('systemd-analyze', ['verify', unitFile], { encoding: 'utf8' });
  assert.equal(verify.error, undefined, 'systemd-analyze is missing: run scripts/setup.sh');
  assert.equal(verify.status, 0, verify.stderr);
  const refused = await runCli(['install-service', '--config', config, '--output', unitFile]);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /exists; use --force/);
  const printed = await runCli(['install-service', '--config', config, '--print']);
  assert.equal(printed.stdout, unit);
});

test('hosts and sweep — the local agent is one host; sweep --dry-run prints each action; a host without a sweeper fails with the code', async (t) => {
  const { dir, config } = await localAgent(t, `  - use: ${sweepStub}\n`);
  const hosts = await runCli(['hosts', '--config', config, '--json']);
  assert.equal(hosts.code, 0, hosts.stderr);
  const listed = json<{ hosts: { host: string; state: string; plugins: string[] }[] }>(hosts);
  assert.deepEqual(listed.hosts.map((h) => [h.host, h.state, h.plugins]), [['ops-host', 'up', ['core', 'sweep-stub']]]);
  const nobody = await runCli(['hosts', '--config', config, '--socket', join(dir, 'nobody.sock'), '--json']);
  assert.equal(nobody.code, 0, nobody.stderr);
  assert.deepEqual(json<{ hosts: { state: string }[] }>(nobody).hosts.map((h) => h.state), ['down']);
  // An agent that takes the connection and never answers (stalled): down too, and nothing hangs. Before,
  // `hosts` exited 5, and `call` never exited at all (its client waited for the agent to close).
  const mutePath = join(dir, 'mute.sock');
  const held: Socket[] = [];
  const mute = createServer((socket) => void held.push(socket));
  await new Promise<void>((resolve) => mute.listen(mutePath, resolve));
  t.after(() => (held.forEach((socket) => socket.destroy()), mute.close()));
  const stalled = await runCli(['hosts', '--config', config, '--socket', mutePath, '--json'], { timeoutMs: 30_000 });
  assert.equal(stalled.code, 0, stalled.stderr);
  assert.deepEqual(json<{ hosts: { state: string }[] }>(stalled).hosts.map((h) => h.state), ['down']);
  const call = await runCli(['call', 'host-info', '--config', config, '--socket', mutePath, '--timeout', '1000']);
  assert.equal(call.code, 5, call.stderr);
  assert.match(call.stderr, /error \[CLIENT_TIMEOUT\]/);

  const dry = await runCli(['sweep', '--dry-run', '--config', config]);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, /ops-host:\nACTION\s+TARGET\s+REASON\s+DONE\ndelete-vm\s+ops-host\.orphaned\s+no record for this QEMU process\s+false/);
  assert.match(dry.stderr, /… ops-host: scanning/);
  const real = json<{ ok: boolean; dryRun: boolean; hosts: { host: string; ok: boolean; result: { actions: { done: boolean }[] } }[]; missing: string[] }>(
    await runCli(['sweep', '--config', config, '--json']),
  );
  assert.equal(real.ok, true);
  assert.equal(real.dryRun, false);
  assert.deepEqual(real.missing, []);
  assert.deepEqual(real.hosts.map((h) => [h.host, h.ok, h.result.actions.map((a) => a.done)]), [['ops-host', true, [true, true]]]);

  const { config: bare } = await localAgent(t, `  - use: ${testkitPath}\n`);
  const none = await runCli(['sweep', '--config', bare, '--json']);
  assert.equal(none.code, 1);
  assert.equal(json<{ hosts: { error: { code: string } }[] }>(none).hosts[0]?.error.code, 'UNKNOWN_TYPE');
});

test('vm commands — usage errors exit 2 before anything is sent; a wire error shows its code, host and hint', async (t) => {
  for (const args of [['vm', 'show', 'not-a-vm-id'], ['vm', 'create'], ['vm', 'create', '--image', 'x', '--memory', 'lots'], ['vm', 'list', '--image', 'x'], ['vm', 'frobnicate'], ['vm', 'restart', 'a.bcdefghi', '--network', 'user']]) {
    const result = await runCli(args);
    assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /error \[USAGE\]/);
  }
  const { config, dir } = await localAgent(t, `  - use: ${testkitPath}\n`);
  const human = await runCli(['vm', 'show', 'ops-host.abcdefgh', '--config', config]);
  assert.equal(human.code, 1);
  assert.match(human.stderr, /^error \[UNKNOWN_TYPE\] from ops-host: no plugin on host "ops-host" handles "get-vm"\nhint: run "cloudlet plugins"/);
  const machine = await runCli(['vm', 'show', 'ops-host.abcdefgh', '--config', config, '--json']);
  assert.equal(machine.code, 1);
  assert.deepEqual(Object.keys(json<object>(machine)), ['ok', 'host', 'error']);
  const unreachable = await runCli(['vm', 'list', '--config', config, '--socket', join(dir, 'gone.sock')]);
  assert.equal(unreachable.code, 4);
  assert.match(unreachable.stderr, /AGENT_UNREACHABLE[\s\S]*hint: /);
});

test('metrics — the endpoint counts messages by type and outcome, shows pools, and /healthz is 200 while the agent runs', async (t) => {
  const port = await freePort();
  const { config } = await localAgent(t, `  - use: ${testkitPath}\n  - use: metrics\n    options:\n      listen: 127.0.0.1:${port}\n`);
  for (const payload of ['{"value":1}', '{"value":2}']) assert.equal((await runCli(['call', 'test.echo', '--config', config, '--payload', payload])).code, 0);
  assert.equal((await runCli(['call', 'test.fail', '--config', config])).code, 1);
  assert.equal((await runCli(['call', 'no-such-type', '--config', config])).code, 1);
  const scrape = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(scrape.status, 200);
  assert.match(scrape.headers.get('content-type') ?? '', /^text\/plain/);
  const text = await scrape.text();
  for (const line of [
    'cloudlet_messages_total{type="test.echo",outcome="ok",code=""} 2',
    'cloudlet_messages_total{type="test.fail",outcome="error",code="TESTKIT_REFUSED"} 1',
    'cloudlet_messages_total{type="other",outcome="error",code="UNKNOWN_TYPE"} 1',
    'cloudlet_message_duration_seconds_count{type="test.echo",outcome="ok"} 2',
    'cloudlet_pool_max_threads{type="test.echo"} 2',
    'cloudlet_pool_tasks_per_thread{type="test.echo"} 16',
    'cloudlet_pool_utilisation_ratio{type="test.echo"} 0',
    'cloudlet_pool_queued{type="test.echo"} 0',
    'cloudlet_transport_up{transport="local"} 1',
    'cloudlet_agent_state{state="running"} 1',
    'cloudlet_agent_info{host="ops-host",version="0.1.0",transport="local"} 1',
  ]) {
    assert.ok(text.split('\n').includes(line), `missing "${line}" in\n${text}`);
  }
  assert.match(text, /^process_cpu_user_seconds_total /m);
  const health = await fetch(`http://127.0.0.1:${port}/healthz`);
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: 'ok', host: 'ops-host', state: 'running', transport: { kind: 'local', up: true }, inFlight: 0 });
  assert.equal((await fetch(`http://127.0.0.1:${port}/nope`)).status, 404);
  const doctor = await runCli(['doctor', '--config', config, '--json']);
  const metricsCheck = json<{ checks: { id: string; status: string }[] }>(doctor).checks.find((c) => c.id === 'metrics');
  assert.equal(metricsCheck?.status, 'ok');
});

test('health — 503 while the broker is down, 200 again once the agent reconnected', async (t) => {
  const node = await startRabbitNode(t, { name: 'ops-health' });
  const port = await freePort();
  const dir = await tempDir(t);
  const config = await writeConfig(
    dir,
    'h.yaml',
    `host:\n  id: healthy\ntransport:\n  kind: amqp\n  url: "${node.url}"\n  prefix: ops-health\n  heartbeatMs: 300\nstate:\n  dir: ${join(dir, 'state')}\nplugins:\n  - use: routing-direct\n  - use: metrics\n    options:\n      listen: 127.0.0.1:${port}\n      processMetrics: false\n`,
  );
  await spawnAgent(t, config);
  const status = async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).status;
  const until = async (wanted: number) => {
    const deadline = Date.now() + 30_000;
    while ((await status()) !== wanted) {
      assert.ok(Date.now() < deadline, `/healthz did not become ${wanted}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  assert.equal(await status(), 200);
  await node.stop();
  await until(503);
  const body = (await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()) as { state: string; transport: { up: boolean } };
  assert.deepEqual([body.state, body.transport.up], ['running', false]);
  assert.match(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), /^cloudlet_transport_up\{transport="amqp"\} 0$/m);
  await node.start();
  await until(200);
});

test('doctor — names what is missing (qemu binary, images folder, bridge) with a fix, and exits 1', async (t) => {
  const dir = await tempDir(t);
  const broken = await writeConfig(
    dir,
    'broken.yaml',
    `host:\n  id: doc\ntransport:\n  kind: local\n  socket: ${join(dir, 'a.sock')}\nstate:\n  dir: ${join(dir, 'state')}\nplugins:\n  - use: qemu-backend\n    options:\n      imagesDir: ${join(dir, 'no-images')}\n      stateDir: ${join(dir, 'vms')}\n      qemuBinary: /nonexistent/qemu-system-x86_64\n      network:\n        mode: bridge\n        bridge: nosuchbr0\n`,
  );
  const human = await runCli(['doctor', '--config', broken]);
  assert.equal(human.code, 1, human.stdout + human.stderr);
  assert.match(human.stdout, /^FAIL +qemu +\/nonexistent\/qemu-system-x86_64 not found \(qemu-backend qemuBinary\)\n +fix: apt-get install qemu-system-x86/m);
  assert.match(human.stdout, /^FAIL +images-dir +the images folder .*no-images does not exist/m);
  assert.match(human.stdout, /^FAIL +bridge +bridge "nosuchbr0" does not exist \(qemu-backend network\.bridge\)\n +fix: create it: ip link add nosuchbr0 type bridge/m);
  assert.match(human.stdout, /3 check\(s\) failed/);
  const machine = json<{ ok: boolean; host: string; checks: { id: string; plugin: string | null; status: string; fix?: string }[] }>(await runCli(['doctor', '--config', broken, '--json']));
  assert.equal(machine.ok, false);
  assert.deepEqual(machine.checks.filter((c) => c.status === 'fail').map((c) => [c.id, c.plugin]), [['qemu', 'qemu-backend'], ['bridge', 'qemu-backend'], ['images-dir', 'qemu-backend']]);
  assert.ok(machine.checks.filter((c) => c.status !== 'ok').every((c) => typeof c.fix === 'string' && c.fix.length > 0));

  // A folder without a kernel (lost+found on an images filesystem) and a stray file are no images.
  await mkdir(join(dir, 'images', 'lost+found'), { recursive: true });
  await writeFile(join(dir, 'images', 'README.txt'), 'not an image');
  const fine = await writeConfig(
    dir,
    'fine.yaml',
    `host:\n  id: doc\ntransport:\n  kind: local\n  socket: ${join(dir, 'b.sock')}\nstate:\n  dir: ${join(dir, 'state')}\nplugins:\n  - use: qemu-backend\n    options:\n      imagesDir: ${join(dir, 'images')}\n      stateDir: ${join(dir, 'vms')}\n      accel: tcg\n      network:\n        mode: user\n`,
  );
  const healthy = await runCli(['doctor', '--config', fine]);
  assert.equal(healthy.code, 0, healthy.stdout);
  assert.match(healthy.stdout, /^ok +qemu +\/\S+qemu-system-x86_64: QEMU emulator version/m);
  assert.match(healthy.stdout, /^warn +images-dir +the images folder .* is empty/m);
  await writeFile(join(dir, 'images', 'tiny.qcow2'), '');
  assert.match((await runCli(['doctor', '--config', fine])).stdout, /^ok +images-dir +the images folder .* has 1 image\(s\)/m);

  const invalid = await runCli(['doctor', '--config', await writeConfig(dir, 'invalid.yaml', 'log:\n  level: loud\n')]);
  assert.equal(invalid.code, 3);
  assert.match(invalid.stdout, /FAIL +config[\s\S]*log\.level/);
});

test('doctor — the broker is tried with the configured credentials', async (t) => {
  const dir = await tempDir(t);
  const url = new URL(SHARED_BROKER);
  url.password = 'certainly-wrong';
  const config = await writeConfig(dir, 'amqp.yaml', `host:\n  id: doc\ntransport:\n  kind: amqp\n  url: "${url.href}"\nstate:\n  dir: ${join(dir, 'state')}\n`);
  const result = await runCli(['doctor', '--config', config]);
  assert.equal(result.code, 1);
  assert.match(result.stdout, /^FAIL +broker +the broker at amqp:\/\/guest:\*\*\*@127\.0\.0\.1:5672 refused the credentials\n +fix: /m);
  assert.doesNotMatch(result.stdout + result.stderr, /certainly-wrong/);
  const good = await writeConfig(dir, 'good.yaml', `host:\n  id: doc\ntransport:\n  kind: amqp\n  url: "${SHARED_BROKER}"\nstate:\n  dir: ${join(dir, 'state')}\n`);
  const reached = await runCli(['doctor', '--config', good]);
  assert.equal(reached.code, 0, reached.stdout);
  assert.match(reached.stdout, /^ok +broker +connected to amqp:\/\/guest:\*\*\*@127\.0\.0\.1:5672 with the configured credentials/m);
});

test('sweep — on RabbitMQ every live host sweeps, or only --host', async (t) => {
  const prefix = `ops-${Math.random().toString(36).slice(2, 8)}`;
  const dir = await tempDir(t);
  const transport = `transport:\n  kind: amqp\n  url: "${SHARED_BROKER}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: 15000\n`; // nothing here waits for a host to be judged down
  // One hook, registered before the agents: it stops them first (hooks run in registration order), or they
  // would declare the topology again right after it was deleted.
  const agents: Awaited<ReturnType<typeof spawnAgent>>[] = [];
  t.after(async () => {
    for (const agent of agents) {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
    await deletePrefix(SHARED_BROKER, prefix, ['sw1', 'sw2']);
  });
  for (const id of ['sw1', 'sw2']) {
    const file = await writeConfig(dir, `${id}.yaml`, `host:\n  id: ${id}\n${transport}state:\n  dir: ${join(dir, id)}\nplugins:\n  - use: routing-direct\n  - use: routing-fanout\n  - use: ${sweepStub}\n`);
    agents.push(await spawnAgent(t, file));
  }
  const client = await writeConfig(dir, 'client.yaml', transport);
  await new Promise((r) => setTimeout(r, 500));
  const all = await runCli(['sweep', '--dry-run', '--config', client, '--json']);
  assert.equal(all.code, 0, all.stderr);
  const swept = json<{ dryRun: boolean; hosts: { host: string; ok: boolean }[]; missing: string[] }>(all);
  assert.deepEqual([swept.dryRun, swept.hosts.map((h) => [h.host, h.ok]), swept.missing], [true, [['sw1', true], ['sw2', true]], []]);
  const one = await runCli(['sweep', '--dry-run', '--host', 'sw2', '--config', client, '--json']);
  assert.deepEqual(json<{ hosts: { host: string }[] }>(one).hosts.map((h) => h.host), ['sw2']);
  const hosts = await runCli(['hosts', '--config', client]);
  assert.match(hosts.stdout, /^sw1 +up /m);
});
