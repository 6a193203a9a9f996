import { CloudletError } from '../../errors.ts';
import { silentLogger } from '../../logger.ts';
import { AmqpClientTransport } from '../../transports/amqp/client.ts';
import { refuseConfigPositionals } from '../args.ts';
import { openClient, resultOf } from '../client.ts';
import type { Command } from '../command.ts';
import { clientConfig } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';
import { table } from '../output.ts';

/** One row of `cloudlet hosts`, the same shape on both transports. */
interface HostRow {
  host: string;
  /** As routing sees it: `down` once not heard for downAfterMs (a stopped host too, then). */
  state: 'up' | 'down';
  /** Its agent said it stopped cleanly (its last heartbeat); until it is heard again. Added beside `state`. */
  stopped?: true;
  lastSeenMsAgo: number | null;
  version: string | null;
  plugins: string[];
  routes: string[];
  startedAt: string | null;
}

export const hostsCommand: Command = {
  words: ['hosts'],
  usage: `cloudlet hosts [--config FILE] [--socket PATH] [--json]
  Lists the hosts of the cloud: state (up, stopped, down), last seen, version, plugins and the routes each
  takes. On RabbitMQ from the hosts' heartbeats; on the local transport the one agent, asked with host-info.
  "stopped": its agent said it stopped cleanly (until downAfterMs has passed, then "down"); "down": not heard
  from for downAfterMs. A host that is down stays listed until it comes back or is taken out of service with
  "cloudlet hosts forget".`,
  flags: ['socket'],
  async run({ positionals, values, output }) {
    refuseConfigPositionals('hosts', positionals);
    const config = await clientConfig(values.config);
    const hosts = config.transport.kind === 'amqp' ? await heartbeatRows(config) : await localRow(values);
    const rows = hosts.map((h) => [
      h.host,
      // A stopped host is up for routing until downAfterMs (a restart's requests wait for it): said as stopped.
      h.stopped && h.state === 'up' ? 'stopped' : h.state,
      h.lastSeenMsAgo === null ? '-' : `${(h.lastSeenMsAgo / 1000).toFixed(1)} s ago`,
      h.version ?? '?',
      h.routes.join(',') || '-',
      h.plugins.join(','),
    ]);
    output.result(hosts.length === 0 ? 'no hosts have announced themselves' : table(['HOST', 'STATE', 'LAST SEEN', 'VERSION', 'ROUTES', 'PLUGINS'], rows), { hosts });
    return EXIT.OK;
  },
};

async function heartbeatRows(config: Awaited<ReturnType<typeof clientConfig>>): Promise<HostRow[]> {
  if (config.transport.kind !== 'amqp') return [];
  const client = new AmqpClientTransport({ config: config.transport, maxMessageBytes: config.limits.maxMessageBytes, log: silentLogger() });
  try {
    return (await client.hosts()).map((h) => ({
      host: h.host,
      state: h.state,
      ...(h.stopped ? { stopped: true as const } : {}),
      lastSeenMsAgo: h.agoMs,
      version: h.heartbeat?.version ?? null,
      plugins: h.heartbeat?.plugins ?? [],
      routes: h.routes,
      startedAt: h.heartbeat ? new Date(h.heartbeat.startedAt).toISOString() : null,
    }));
  } finally {
    await client.close();
  }
}

/** The local agent as one host; an agent that does not answer is listed as down (the exit code stays 0). */
async function localRow(values: Parameters<typeof openClient>[0]): Promise<HostRow[]> {
  const client = await openClient(values, { inactivityTimeoutMs: 10_000 });
  try {
    const info = resultOf<{ host: string; agentVersion: string; startedAt: string; plugins: { name: string }[] }>(await client.request('host-info', {}));
    return [{ host: info.host, state: 'up', lastSeenMsAgo: 0, version: info.agentVersion, plugins: info.plugins.map((p) => p.name), routes: [], startedAt: info.startedAt }];
  } catch (error) {
    // Not there, gone, or there and not answering (stalled): all "down", as CLI.md promises.
    if (!(error instanceof CloudletError) || !['AGENT_UNREACHABLE', 'CONNECTION_LOST', 'CLIENT_TIMEOUT'].includes(error.code)) throw error;
    const id = client.config.host.id ?? 'local';
    return [{ host: id, state: 'down', lastSeenMsAgo: null, version: null, plugins: [], routes: [], startedAt: null }];
  } finally {
    await client.close();
  }
}
