/** Several real agent processes on one broker, each with its own host id, under a prefix unique to the test. */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import amqplib from 'amqplib';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { silentLogger } from '../../core/logger.ts';
import { spawnAgent, tempDir, testkitPath, writeConfig, type AgentProcess } from '../helpers.ts';

export const SHARED_BROKER = process.env.CLOUDLET_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

/** A broker on this machine, which rabbitmqctl (run here) can inspect. */
export function isLocalBroker(url: string): boolean {
  return ['127.0.0.1', 'localhost'].includes(new URL(url).hostname);
}

export interface HostSpec {
  id: string;
  /** Extra YAML lines under the testkit plugin's options. */
  testkitOptions?: Record<string, unknown>;
  acceptAny?: boolean;
  fanout?: boolean;
  /** false: no routing-direct (the host takes no direct or any-host requests). */
  direct?: boolean;
  /** This host's broker URL, when it must differ from the cloud's (a short AMQP heartbeat for it alone). */
  url?: string;
}

export interface Cloud {
  prefix: string;
  url: string;
  dir: string;
  agents: Map<string, AgentProcess>;
  configFor(host: string): string;
  /** A client config file (same broker and prefix). */
  clientConfig: string;
  start(host: HostSpec): Promise<AgentProcess>;
  client(options?: { inactivityTimeoutMs?: number; maxMessageBytes?: number }): AmqpClientTransport;
}

/** Short, so that a killed host is noticed within a test's patience. */
const DOWN_AFTER_MS = 1_200;

/** Short, so tests of a lost binding do not wait the default 30 s for it to come back. */
const BINDING_REFRESH_MS = 1_500;

const transportYaml = (url: string, prefix: string, extra: string, downAfterMs = DOWN_AFTER_MS) =>
  `transport:\n  kind: amqp\n  url: "${url}"\n  prefix: ${prefix}\n  heartbeatMs: 300\n  downAfterMs: ${downAfterMs}\n${extra.includes('bindingRefreshMs') ? '' : `  bindingRefreshMs: ${BINDING_REFRESH_MS}\n`}${extra}`;

export async function startCloud(
  t: TestContext,
  hosts: HostSpec[],
  options: {
    url?: string;
    transportExtra?: string;
    routingAny?: string[];
    hostYaml?: (host: string) => string;
    /** Longer for a test whose hosts must stay live while rabbitmqctl and a broker node of its own load the machine. */
    downAfterMs?: number;
  } = {},
): Promise<Cloud> {
  const url = options.url ?? SHARED_BROKER;
  const prefix = `t-${randomUUID().slice(0, 8)}`;
  const dir = await tempDir(t, 'cloudlet-cloud-');
  const agents = new Map<string, AgentProcess>();
  const configs = new Map<string, string>();
  const transportExtra = options.transportExtra ?? '';
  const routing = `routing:\n  broadcast: [host-info]\n  any: [${(options.routingAny ?? ['test.reserve', 'test.echo']).join(', ')}]\n`;
  const downAfterMs = options.downAfterMs ?? DOWN_AFTER_MS;
  const clientConfig = await writeConfig(dir, 'client.yaml', `${transportYaml(url, prefix, transportExtra, downAfterMs)}${routing}`);
  const clients: AmqpClientTransport[] = [];

  // node:test runs after-hooks in registration order, so this one (registered before any agent's) stops the
  // agents itself: otherwise they would re-declare the topology just deleted.
  t.after(async () => {
    for (const client of clients) await client.close().catch(() => undefined);
    for (const agent of agents.values()) {
      if (agent.child.exitCode === null && agent.child.signalCode === null) {
        agent.child.kill('SIGKILL');
        await agent.exited;
      }
    }
    await deletePrefix(url, prefix, [...configs.keys()]).catch(() => undefined);
  });

  const cloud: Cloud = {
    prefix,
    url,
    dir,
    agents,
    clientConfig,
    configFor: (host) => configs.get(host) as string,
    async start(spec) {
      const plugins = [
        ...(spec.direct === false ? [] : [`  - use: routing-direct\n    options:\n      acceptAny: ${spec.acceptAny ?? true}`]),
        ...(spec.fanout === false ? [] : ['  - use: routing-fanout']),
        `  - use: ${testkitPath}\n    options: ${JSON.stringify(spec.testkitOptions ?? {})}`,
      ];
      const file =
        configs.get(spec.id) ??
        (await writeConfig(
          dir,
          `${spec.id}.yaml`,
          `host:\n  id: ${spec.id}\n${options.hostYaml?.(spec.id) ?? ''}${transportYaml(spec.url ?? url, prefix, transportExtra, downAfterMs)}state:\n  dir: ${join(dir, 'state', spec.id)}\nlog:\n  level: debug\n${routing}plugins:\n${plugins.join('\n')}\n`,
        ));
      configs.set(spec.id, file);
      const agent = await spawnAgent(t, file);
      agents.set(spec.id, agent);
      return agent;
    },
    client(clientOptions = {}) {
      const client = new AmqpClientTransport({
        config: amqpTransportSchema.parse({ kind: 'amqp', url, prefix, heartbeatMs: 300, downAfterMs, bindingRefreshMs: BINDING_REFRESH_MS }),
        maxMessageBytes: 1024 * 1024,
        log: silentLogger(),
        ...clientOptions,
      });
      clients.push(client);
      return client;
    },
  };
  await Promise.all(hosts.map((host) => cloud.start(host)));
  return cloud;
}

/** Removes every durable exchange and queue a test created, so the shared broker does not fill up. */
export async function deletePrefix(url: string, prefix: string, hostIds: string[]): Promise<void> {
  const names = amqpNames(prefix);
  const connection = await amqplib.connect(url);
  try {
    for (const queue of [...hostIds.map((h) => names.hostQueue(h)), names.anyQueue, names.deadLetter]) {
      const channel = await connection.createChannel();
      await channel.deleteQueue(queue).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
    for (const exchange of [names.directExchange, names.broadcastExchange, names.presenceExchange, names.eventsExchange, names.deadLetter]) {
      const channel = await connection.createChannel();
      await channel.deleteExchange(exchange).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
  } finally {
    await connection.close();
  }
}

/** Messages waiting in a queue (e.g. the dead-letter queue). */
export async function queueDepth(url: string, queue: string): Promise<number> {
  const connection = await amqplib.connect(url);
  try {
    const channel = await connection.createChannel();
    const { messageCount } = await channel.checkQueue(queue);
    return messageCount;
  } finally {
    await connection.close();
  }
}
