/** Agents on the local transport (a unix socket in a temp dir), for benchmarks that need no broker. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalClientTransport } from '../../core/transports/local.ts';
import { spawnAgent, type BenchProcess, type SpawnOptions } from './processes.ts';
import type { CleanupScope } from './scope.ts';

export async function benchTempDir(scope: CleanupScope, prefix = 'cloudlet-bench-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  scope.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** True once something accepts connections on the socket. */
export function socketAccepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

export interface LocalAgentConfig {
  dir: string;
  hostId: string;
  /** Plugin entries as YAML list items. */
  pluginsYaml: string[];
  logLevel?: string;
}

/** Writes a local-transport host config; returns its file and socket path. */
export async function writeLocalConfig(config: LocalAgentConfig): Promise<{ file: string; socket: string }> {
  const socket = join(config.dir, `${config.hostId}.sock`);
  const file = join(config.dir, `${config.hostId}.yaml`);
  await writeFile(
    file,
    `host:\n  id: ${config.hostId}\ntransport:\n  kind: local\n  socket: ${socket}\nstate:\n  dir: ${join(config.dir, 'state', config.hostId)}\nlog:\n  level: ${config.logLevel ?? 'warn'}\n  format: json\n${config.pluginsYaml.length === 0 ? 'plugins: []' : `plugins:\n${config.pluginsYaml.join('\n')}`}\n`,
  );
  return { file, socket };
}

/** Starts `cloudlet agent` on a local socket; ready when the socket accepts connections. */
export async function startLocalAgent(
  scope: CleanupScope,
  config: LocalAgentConfig,
  spawnOptions: SpawnOptions = {},
): Promise<{ agent: BenchProcess; socket: string; file: string; client: LocalClientTransport }> {
  const { file, socket } = await writeLocalConfig(config);
  const agent = await spawnAgent(scope, file, { ...spawnOptions, isReady: () => socketAccepts(socket) });
  const client = new LocalClientTransport({ socketPath: socket, inactivityTimeoutMs: 120_000 });
  scope.after(() => client.close());
  return { agent, socket, file, client };
}
