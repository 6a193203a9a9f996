/**
 * A host's complete, validated configuration: the core's settings, the plugins in dependency order with
 * their parsed options, and every message type with its effective pool settings.
 */
import { CloudletError } from '../errors.ts';
import type { MessageDefinition, PoolSettings } from '../plugin-api.ts';
import { loadPlugins, type LoadedPlugin } from '../plugins/loader.ts';
import { loadPrivateKey } from '../security/keys.ts';
import { type RawConfig, validateCoreConfig } from './load.ts';
import { type ConfigProblem, configInvalidError } from './problems.ts';
import { type CoreConfig, defaultHostId, defaultPoolSettings, poolSettingsSchema, type SecurityConfig } from './schema.ts';

export interface MessageRoute {
  type: string;
  plugin: LoadedPlugin;
  definition: MessageDefinition;
  pool: PoolSettings;
}

export interface HostConfig {
  file: string;
  core: CoreConfig;
  hostId: string;
  plugins: LoadedPlugin[];
  messages: Map<string, MessageRoute>;
}

export type HostConfigCheck = { ok: true; config: HostConfig } | { ok: false; problems: ConfigProblem[] };

/** Validates everything and returns every problem found; nothing with side effects runs. */
export async function checkHostConfig(raw: RawConfig): Promise<HostConfigCheck> {
  const core = validateCoreConfig(raw);
  const problems = [...core.problems];
  const loaded = await loadPlugins(core.pluginEntries, raw.file);
  problems.push(...loaded.problems);
  if (core.config) problems.push(...(await keyFileProblems(core.config.security, raw.file)));

  const messages = new Map<string, MessageRoute>();
  const knownTypes = new Set<string>();
  for (const plugin of loaded.plugins) {
    for (const [type, definition] of Object.entries(plugin.plugin.messages ?? {})) {
      if (knownTypes.has(type)) continue; // reported as PLUGIN_MESSAGE_CONFLICT
      knownTypes.add(type);
      const override = core.pools[type];
      const merged = { ...defaultPoolSettings, ...definition.pool, ...override };
      const pool = poolSettingsSchema.safeParse(merged);
      if (!pool.success || merged.minThreads > merged.maxThreads) {
        // Each value with where it came from: the one to change may be a default the config never named.
        const from = (key: keyof typeof merged) =>
          `${key} ${merged[key]} (${override?.[key] !== undefined ? 'this config' : definition.pool?.[key] !== undefined ? `plugin "${plugin.plugin.name}"'s default` : 'the core default'})`;
        problems.push({
          code: 'CONFIG_INVALID',
          file: raw.file,
          path: `pools.${type}`,
          message: pool.success ? 'minThreads is larger than maxThreads' : pool.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '),
          found: pool.success ? `${from('minThreads')}, ${from('maxThreads')}` : JSON.stringify(merged),
        });
        continue;
      }
      messages.set(type, { type, plugin, definition, pool: pool.data });
    }
  }
  for (const type of core.poolTypes) {
    if (!knownTypes.has(type)) {
      problems.push({
        code: 'CONFIG_INVALID',
        file: raw.file,
        path: `pools.${type}`,
        message: `no loaded plugin handles message type "${type}"`,
        found: type,
        allowed: [...knownTypes].sort().join(', '),
      });
    }
  }
  if (!core.config || problems.length > 0) return { ok: false, problems };
  return {
    ok: true,
    config: {
      file: raw.file,
      core: core.config,
      hostId: core.config.host.id ?? defaultHostId(),
      plugins: loaded.plugins,
      messages,
    },
  };
}

/** Like checkHostConfig, but throws one CloudletError (CONFIG_INVALID or the single problem's code). */
export async function loadHostConfig(raw: RawConfig): Promise<HostConfig> {
  const checked = await checkHostConfig(raw);
  if (!checked.ok) throw configInvalidError(checked.problems);
  return checked.config;
}

/**
 * Each key file the config names, read as the agent (hostKeyFile) and the CLI (clientKeyFile) will read it,
 * so that a missing, open or wrong key is found by `config check`, not only when the agent starts or a
 * command signs. The file is only read.
 */
async function keyFileProblems(security: SecurityConfig, configFile: string): Promise<ConfigProblem[]> {
  const problems: ConfigProblem[] = [];
  for (const setting of ['hostKeyFile', 'clientKeyFile'] as const) {
    const file = security[setting];
    if (file === undefined) continue;
    await loadPrivateKey(file).catch((error: unknown) => {
      if (!(error instanceof CloudletError)) throw error;
      problems.push({ code: error.code, file: configFile, path: `security.${setting}`, message: error.message, found: file });
    });
  }
  return problems;
}
