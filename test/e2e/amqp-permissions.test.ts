/**
 * SECURITY.md's RabbitMQ users, as written: the test runs the doc's own `rabbitmqctl` lines (on a vhost and
 * users of its own) and checks that an agent and a client with those permissions do everything they are
 * meant to: the agent starts and serves, the client calls one host, gathers from all, takes an any-host
 * request, lists hosts and follows events. And that the client's permissions keep it from a host's queue.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeRequest } from '../../core/envelope.ts';
import { silentLogger } from '../../core/logger.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { runCli, spawnAgent, tempDir, testkitPath, writeConfig } from '../helpers.ts';

const run = promisify(execFile);
const rabbitmqctl = (...args: string[]) => run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });

/** The doc's `set_permissions` lines: user and its configure, write and read patterns. */
async function documentedPermissions(): Promise<Map<string, [string, string, string]>> {
  const doc = await readFile(new URL('../../docs/SECURITY.md', import.meta.url), 'utf8');
  const permissions = new Map<string, [string, string, string]>();
  for (const line of doc.split('\n')) {
    const match = /^rabbitmqctl set_permissions -p cloudlet (\S+) '([^']*)' '([^']*)' '([^']*)'$/.exec(line.trim());
    if (match) permissions.set(match[1]!, [match[2]!, match[3]!, match[4]!]);
  }
  return permissions;
}

test('SECURITY.md — the documented agent and client permissions let each do its job, and no more', { timeout: 180_000 }, async (t) => {
  const permissions = await documentedPermissions();
  assert.deepEqual([...permissions.keys()], ['cloudlet-agent', 'cloudlet-ops'], 'SECURITY.md no longer has the two set_permissions lines this test runs');
  const tag = randomUUID().slice(0, 8);
  const vhost = `cloudlet-perm-${tag}`;
  const password = randomUUID();
  const users = { agent: `perm-agent-${tag}`, ops: `perm-ops-${tag}` };
  t.after(async () => {
    await rabbitmqctl('delete_vhost', vhost).catch(() => undefined);
    for (const user of Object.values(users)) await rabbitmqctl('delete_user', user).catch(() => undefined);
  });
  await rabbitmqctl('add_vhost', vhost);
  for (const [role, user] of Object.entries(users)) {
    await rabbitmqctl('add_user', user, password);
    await rabbitmqctl('set_permissions', '-p', vhost, user, ...permissions.get(role === 'agent' ? 'cloudlet-agent' : 'cloudlet-ops')!);
  }
  const urlOf = (user: string) => `amqp://${user}:${password}@127.0.0.1:5672/${vhost}`;
  // The doc's patterns are written for the default prefix, "cloudlet".
  const transport = (user: string) => `transport:\n  kind: amqp\n  url: "${urlOf(user)}"\n  heartbeatMs: 300\n  downAfterMs: 1200\n`;
  const routing = 'routing:\n  broadcast: [host-info]\n  any: [test.echo]\n';
  const dir = await tempDir(t, 'cloudlet-perm-');
  const agents = new Map<string, Awaited<ReturnType<typeof spawnAgent>>>();
  for (const host of ['h1', 'h2']) {
    const config = await writeConfig(
      dir,
      `${host}.yaml`,
      `host:\n  id: ${host}\n${transport(users.agent)}state:\n  dir: ${dir}/state-${host}\n${routing}plugins:\n  - use: routing-direct\n    options:\n      acceptAny: true\n  - use: routing-fanout\n  - use: ${testkitPath}\n    options: {}\n`,
    );
    agents.set(host, await spawnAgent(t, config));
  }
  const opsConfig = await writeConfig(dir, 'ops.yaml', `${transport(users.ops)}${routing}`);

  const direct = await runCli(['call', 'host-info', '--config', opsConfig, '--host', 'h1', '--json']);
  assert.equal(direct.code, 0, direct.stderr);
  assert.equal(JSON.parse(direct.stdout).host, 'h1');
  const gathered = await runCli(['call', 'host-info', '--config', opsConfig, '--json']);
  assert.equal(gathered.code, 0, gathered.stderr);
  assert.match(gathered.stdout, /"h1"/);
  assert.match(gathered.stdout, /"h2"/);
  const hosts = await runCli(['hosts', '--config', opsConfig]);
  assert.equal(hosts.code, 0, hosts.stderr);
  assert.match(hosts.stdout, /h1[\s\S]*h2|h2[\s\S]*h1/);

  const client = new AmqpClientTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: urlOf(users.ops), heartbeatMs: 300, downAfterMs: 1200 }),
    maxMessageBytes: 1 << 20,
    log: silentLogger(),
  });
  t.after(() => client.close());
  const any = await client.request(makeRequest({ type: 'test.echo', payload: { value: 'any' } }));
  assert.equal(any.ok, true, JSON.stringify(any));
  const unsubscribe = await client.subscribe(() => undefined);
  await unsubscribe();

  // What the client must not do: take requests meant for hosts, from a host's own queue or the any-host
  // queue. (A refusal closes the channel, so each try gets its own.)
  const connection = await amqplib.connect(urlOf(users.ops));
  t.after(() => connection.close().catch(() => undefined));
  connection.on('error', () => undefined);
  for (const queue of ['cloudlet.host.h1', 'cloudlet.any']) {
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    await assert.rejects(channel.consume(queue, () => undefined), /ACCESS_REFUSED/, `the client could consume ${queue}`);
  }

  // `hosts forget` by the client's user: the registries forget h2, but its queue, which this user may not
  // configure, stays, and the warning says how to delete it. (Before, the refusal was an INTERNAL error, exit 70.)
  const h2 = agents.get('h2')!;
  h2.child.kill('SIGTERM');
  await h2.exited;
  await new Promise((resolve) => setTimeout(resolve, 1_500)); // past downAfterMs
  const forgot = await runCli(['hosts', 'forget', 'h2', '--config', opsConfig]);
  assert.equal(forgot.code, 0, forgot.stderr);
  assert.match(forgot.stdout, /^forgot h2 \(last heard \d+\.\d s ago\)$/m);
  assert.match(forgot.stderr, /^warning: its queue stays: the broker refused to delete it \(.*ACCESS_REFUSED.*\): this user may not configure it; an administrator can \(rabbitmqctl delete_queue cloudlet\.host\.h2, with -p VHOST\)$/m);
  assert.doesNotMatch((await runCli(['hosts', '--config', opsConfig])).stdout, /^h2 /m);
});
