import { cloudletError } from '../../errors.ts';
import { silentLogger } from '../../logger.ts';
import { AmqpClientTransport } from '../../transports/amqp/client.ts';
import { clientConfig } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';
import { table } from '../output.ts';
import type { CommandContext } from '../main.ts';

export const hostsUsage = `cloudlet hosts [--config FILE] [--json]
  Lists the hosts of the cloud from their heartbeats: state (up/down), last seen, version, plugins and the
  routes each takes. Needs the RabbitMQ transport.`;

export async function hostsCommand({ values, output }: CommandContext): Promise<number> {
  const config = await clientConfig(values.config);
  if (config.transport.kind !== 'amqp') {
    throw cloudletError('USAGE', 'cloudlet hosts needs the RabbitMQ transport (transport.kind: amqp); a local agent is one host: use "cloudlet call host-info"');
  }
  const client = new AmqpClientTransport({ config: config.transport, maxMessageBytes: config.limits.maxMessageBytes, log: silentLogger() });
  try {
    const hosts = (await client.hosts()).map((h) => ({
      host: h.host,
      state: h.state,
      lastSeenMsAgo: h.agoMs,
      version: h.heartbeat?.version ?? null,
      plugins: h.heartbeat?.plugins ?? [],
      routes: h.routes,
      startedAt: h.heartbeat ? new Date(h.heartbeat.startedAt).toISOString() : null,
    }));
    const rows = hosts.map((h) => [h.host, h.state, `${(h.lastSeenMsAgo / 1000).toFixed(1)} s ago`, h.version ?? '?', h.routes.join(','), h.plugins.join(',')]);
    output.result(hosts.length === 0 ? 'no hosts have announced themselves' : table(['HOST', 'STATE', 'LAST SEEN', 'VERSION', 'ROUTES', 'PLUGINS'], rows), { hosts });
    return EXIT.OK;
  } finally {
    await client.close();
  }
}
