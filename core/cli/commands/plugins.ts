import { summarizePlugins } from '../../agent.ts';
import { loadHostConfig } from '../../config/host-config.ts';
import { defaultPoolSettings, type PoolSettingsConfig as PoolSettings } from '../../config/schema.ts';
import { refuseConfigPositionals } from '../args.ts';
import type { Command } from '../command.ts';
import { findRawConfig } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';
import { table } from '../output.ts';

/** Threads, queue and timeout, and the settings a plugin or the config moved away from their defaults. */
function poolSummary(pool: PoolSettings): string {
  const tasks = pool.tasksPerThread === defaultPoolSettings.tasksPerThread ? '' : ` × ${pool.tasksPerThread} tasks`;
  const memory = pool.maxMemoryMb === defaultPoolSettings.maxMemoryMb ? '' : `, heap ${pool.maxMemoryMb} MiB`;
  return `${pool.minThreads}-${pool.maxThreads} threads${tasks}, queue ${pool.maxQueue}, timeout ${pool.timeoutMs} ms${memory}`;
}

export const pluginsCommand: Command = {
  words: ['plugins'],
  usage: `cloudlet plugins [--config FILE] [--json]
  Lists the plugins this host's config loads, with the message types each handles and its pool settings.`,
  flags: [],
  async run({ positionals, values, output }) {
    refuseConfigPositionals('plugins', positionals);
    const config = await loadHostConfig(await findRawConfig(values.config));
    const plugins = summarizePlugins(config.plugins).map((summary) => ({
      ...summary,
      messages: summary.messageTypes.map((type) => ({ type, pool: config.messages.get(type)?.pool })),
    }));
    const rows = plugins.flatMap((p) =>
      (p.messages.length > 0 ? p.messages : [{ type: '-', pool: undefined }]).map((m, i) => [
        i === 0 ? p.name : '',
        i === 0 ? p.version : '',
        m.type,
        m.pool ? poolSummary(m.pool) : '',
        i === 0 ? p.provides.join(',') : '',
        i === 0 ? p.source : '',
      ]),
    );
    output.result(table(['PLUGIN', 'VERSION', 'MESSAGE TYPE', 'POOL', 'PROVIDES', 'SOURCE'], rows), { host: config.hostId, plugins });
    return EXIT.OK;
  },
};
