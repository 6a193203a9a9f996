/**
 * Agents on the shared broker for a benchmark: a prefix of their own (so nothing collides with tests or a
 * real cloud on the same broker), one config file and state folder per host, and the broker's objects under
 * that prefix deleted when the scope closes.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { silentLogger } from '../../core/logger.ts';
import { AmqpClientTransport } from '../../core/transports/amqp/client.ts';
import { deletePrefix } from '../../test/support/cloud.ts';
import { testkitPath } from '../../test/helpers.ts';
import { spawnAgent, type BenchProcess, type SpawnOptions } from './processes.ts';
import type { BenchContext } from './context.ts';

export const BROKER_URL = process.env.CLOUDLET_BENCH_AMQP_URL ?? process.env.CLOUDLET_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

export { testkitPath };

export interface BenchCloudOptions {
  /** How often hosts announce themselves; small, so a new host is seen at once. */
  heartbeatMs: number;
  downAfterMs: number;
  /** Agent log level: `warn` keeps per-message log lines (a testkit echo logs at info) out of the figures. */
  logLevel?: string;
}

export interface BenchCloud {
  prefix: string;
  url: string;
  dir: string;
  /**
   * Starts `cloudlet agent` for a host with the given plugin entries (YAML list items); `configYaml` adds
   * top-level config sections (e.g. `pools:`).
   */
  startAgent(hostId: string, pluginsYaml: string[], spawnOptions?: SpawnOptions, configYaml?: string): Promise<BenchProcess>;
  /** A client on the same broker and prefix, closed with the scope. */
  client(): AmqpClientTransport;
}

export async function benchCloud(ctx: Pick<BenchContext, 'scope' | 'uniqueName'>, options: BenchCloudOptions): Promise<BenchCloud> {
  const { scope } = ctx;
  const prefix = ctx.uniqueName();
  const dir = await mkdtemp(join(tmpdir(), 'cloudlet-bench-'));
  const hosts: string[] = [];
  scope.after(() => rm(dir, { recursive: true, force: true }));
  // Registered before any agent starts, so it runs after they were all stopped (the scope runs newest first).
  scope.after(() => deletePrefix(BROKER_URL, prefix, hosts));
  const transport = (extra = '') =>
    `transport:\n  kind: amqp\n  prefix: ${prefix}\n  heartbeatMs: ${options.heartbeatMs}\n  downAfterMs: ${options.downAfterMs}\n${extra}`;
  let presence: AmqpClientTransport | undefined;
  const cloud: BenchCloud = {
    prefix,
    url: BROKER_URL,
    dir,
    async startAgent(hostId, pluginsYaml, spawnOptions, configYaml = '') {
      hosts.push(hostId);
      const file = join(dir, `${hostId}.yaml`);
      await writeFile(
        file,
        `host:\n  id: ${hostId}\n${transport()}state:\n  dir: ${join(dir, 'state', hostId)}\nlog:\n  level: ${options.logLevel ?? 'warn'}\n  format: json\n${configYaml}${pluginsYaml.length === 0 ? 'plugins: []' : `plugins:\n${pluginsYaml.join('\n')}`}\n`,
      );
      // Ready when its first heartbeat reached us (its "ready" line is logged at info, hidden at warn).
      presence ??= cloud.client();
      const watcher = presence;
      return spawnAgent(scope, file, {
        ...spawnOptions,
        // The broker URL carries a password: given in the environment, never in a world-readable file.
        env: { CLOUDLET_AMQP_URL: BROKER_URL, ...spawnOptions?.env },
        isReady: async () => (await watcher.hosts(50)).some((entry) => entry.host === hostId && entry.state === 'up'),
      });
    },
    client() {
      const client = new AmqpClientTransport({
        config: amqpTransportSchema.parse({ kind: 'amqp', url: BROKER_URL, prefix, heartbeatMs: options.heartbeatMs, downAfterMs: options.downAfterMs }),
        maxMessageBytes: 4 * 1024 * 1024,
        log: silentLogger(),
        inactivityTimeoutMs: 60_000,
      });
      scope.after(() => client.close());
      return client;
    },
  };
  return cloud;
}

export const pluginEntry = {
  routingDirect: (acceptAny = false) => `  - use: routing-direct\n    options:\n      acceptAny: ${acceptAny}`,
  routingFanout: () => '  - use: routing-fanout',
  testkit: () => `  - use: ${testkitPath}\n    options: {}`,
};
