/**
 * Reads a host config (YAML or JSON), applies environment overrides and validates the core's part.
 * Plugin options are validated by the plugin loader, which adds its problems to the same list.
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { type Document, parseDocument } from 'yaml';
import { CloudletError, cloudletError } from '../errors.ts';
import { readTextUpTo } from '../read-up-to.ts';
import { formatPath, messageTypeSchema } from '../envelope.ts';
import { type ConfigProblem, problemsFromZod } from './problems.ts';
import { type CoreConfig, coreConfigSchema, type PluginEntry, pluginEntrySchema, poolOverrideSchema, type PoolOverride } from './schema.ts';

export interface IndexedPluginEntry {
  /** Position in the config's `plugins` list, for problem paths. */
  index: number;
  entry: PluginEntry;
}

/** Environment variables that override config values, so secrets and per-host ids stay out of files. */
export const ENV_OVERRIDES = [
  { variable: 'CLOUDLET_HOST_ID', path: ['host', 'id'] },
  { variable: 'CLOUDLET_LOG_LEVEL', path: ['log', 'level'] },
  { variable: 'CLOUDLET_LOG_FORMAT', path: ['log', 'format'] },
  // A socket only means something for the local transport, so a config without a transport section gets one.
  { variable: 'CLOUDLET_SOCKET', path: ['transport', 'socket'], createParent: { kind: 'local' } },
  { variable: 'CLOUDLET_AMQP_URL', path: ['transport', 'url'], createParent: { kind: 'amqp' } },
  // Only for a RabbitMQ transport, from the file or from CLOUDLET_AMQP_URL (applied first): alone it would
  // make a transport without a URL out of a local host's config, and blame the file for it.
  { variable: 'CLOUDLET_AMQP_PREFIX', path: ['transport', 'prefix'], onlyKind: 'amqp' },
  { variable: 'CLOUDLET_STATE_DIR', path: ['state', 'dir'] },
] as const satisfies readonly { variable: string; path: readonly string[]; createParent?: Record<string, unknown>; onlyKind?: string }[];

export interface RawConfig {
  file: string;
  /** The parsed document after environment overrides. */
  data: unknown;
  /** Config paths whose value came from the environment, mapped to the variable name. */
  fromEnv: Map<string, string>;
}

/** Far more than any config needs; a file past it is the wrong one (or a device that never ends). */
const CONFIG_MAX_BYTES = 4 * 1024 * 1024;

/** Reads and parses the file. Throws CONFIG_NOT_FOUND or CONFIG_SYNTAX (with every syntax error listed). */
export async function readConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<RawConfig> {
  const absolute = resolve(file);
  let read: Awaited<ReturnType<typeof readTextUpTo>>;
  try {
    read = await readTextUpTo(absolute, CONFIG_MAX_BYTES);
  } catch (cause) {
    const reason = (cause as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(cause as Error).message})`;
    throw cloudletError('CONFIG_NOT_FOUND', `config file ${absolute} ${reason}`, { file: absolute }, cause);
  }
  if ('tooLarge' in read) {
    throw cloudletError('CONFIG_NOT_FOUND', `config file ${absolute} cannot be read: it is larger than ${CONFIG_MAX_BYTES / 1024 / 1024} MiB, and a cloudlet config is a few KiB (is it the right file?)`, { file: absolute });
  }
  const { text } = read;
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    const problems: ConfigProblem[] = document.errors.map((error) => ({
      code: 'CONFIG_SYNTAX',
      file: absolute,
      path: error.linePos ? `line ${error.linePos[0].line}, column ${error.linePos[0].col}` : '(root)',
      // yaml appends " at line L, column C:" to the first line; the position is already in `path`.
      message: (error.message.split('\n')[0] ?? error.message).replace(/ at line \d+, column \d+:?$/, ''),
    }));
    throw new CloudletError('CONFIG_SYNTAX', problems.map((p) => `${p.file}: ${p.path}: ${p.message}`).join('\n'), { details: { problems } });
  }
  const data = toData(document, absolute);
  await refuseReadableSecrets(absolute, data);
  return applyEnvOverrides({ file: absolute, data, fromEnv: new Map() }, env);
}

/**
 * The document's value. Aliases are expanded here, and yaml refuses two kinds only now: one whose anchor
 * is not set before it, and so many expansions that they look like a resource-exhaustion attack (a
 * "billion laughs"). Both are the file's fault: CONFIG_SYNTAX, as a parse error is.
 */
function toData(document: Document.Parsed, file: string): unknown {
  let data: unknown;
  try {
    data = (document.toJS() as unknown) ?? {};
  } catch (cause) {
    const message = `a YAML alias cannot be expanded: ${(cause as Error).message}`;
    throw new CloudletError('CONFIG_SYNTAX', `${file}: (root): ${message}`, { details: { problems: [{ code: 'CONFIG_SYNTAX', file, path: '(root)', message }] }, cause });
  }
  const problems = nonJsonValues(data).map(({ path, message }): ConfigProblem => ({ code: 'CONFIG_SYNTAX', file, path, message }));
  if (problems.length > 0) throw new CloudletError('CONFIG_SYNTAX', problems.map((p) => `${p.file}: ${p.path}: ${p.message}`).join('\n'), { details: { problems } });
  return data;
}

/**
 * What in a parsed document JSON could not hold. YAML tags make a Set (!!set), a Map (!!omap, !!pairs), bytes
 * (!!binary) or a Date (!!timestamp): the schemas see an object with no keys, or the wrong type, and a Set
 * passed as `host` unnoticed. A `__proto__` key is refused too: it is no setting, and an object that
 * copies it gets another prototype.
 */
function nonJsonValues(data: unknown): { path: string; message: string }[] {
  const found: { path: string; message: string }[] = [];
  const stack: { value: unknown; path: PropertyKey[] }[] = [{ value: data, path: [] }];
  while (stack.length > 0) {
    const { value, path } = stack.pop() as { value: unknown; path: PropertyKey[] };
    if (value === null || typeof value !== 'object') continue;
    const at = path.length === 0 ? '(root)' : formatPath(path);
    if (Array.isArray(value)) {
      value.forEach((item, index) => stack.push({ value: item, path: [...path, index] }));
    } else if (Object.getPrototypeOf(value) === Object.prototype) {
      for (const [key, item] of Object.entries(value)) {
        if (key === '__proto__') found.push({ path: formatPath([...path, key]), message: 'the key "__proto__" is not allowed' });
        else stack.push({ value: item, path: [...path, key] });
      }
    } else {
      const kind = value instanceof Set ? 'a set (!!set)' : value instanceof Map ? 'an ordered map (!!omap or !!pairs)' : value instanceof Date ? 'a date (!!timestamp)' : value instanceof Uint8Array ? 'bytes (!!binary)' : 'a value of its own type';
      found.push({ path: at, message: `a YAML tag made this ${kind}, which a config value cannot be: write a plain list, mapping, string or number` });
    }
  }
  return found.sort((a, b) => a.path.localeCompare(b.path));
}

/**
 * A config that holds a secret (a password in the broker URL) must not be readable by every user on the
 * host. Keys live in their own files (checked when loaded); this covers the config file itself.
 */
async function refuseReadableSecrets(file: string, data: unknown): Promise<void> {
  const url = (data as { transport?: { url?: unknown } } | null)?.transport?.url;
  const hasPassword = typeof url === 'string' && /^[a-z][a-z0-9+.-]*:\/\/[^/@\s:]*:[^/@\s]+@/i.test(url);
  if (!hasPassword) return;
  const mode = (await stat(file)).mode & 0o777;
  if ((mode & 0o004) === 0) return;
  throw new CloudletError('CONFIG_INSECURE', `${file} holds the broker password (transport.url) and every user can read it (mode ${mode.toString(8)}); run: chmod 640 ${file}, or put the URL in CLOUDLET_AMQP_URL`, {
    details: { problems: [{ code: 'CONFIG_INSECURE', file, path: 'transport.url', message: `a password in a world-readable file; run: chmod 640 ${file}, or put the URL in CLOUDLET_AMQP_URL`, found: `mode ${mode.toString(8)}`, allowed: 'not readable by others (e.g. 640 or 600)' }] },
  });
}

/** An in-memory config (tests, `cloudlet init`), treated exactly like a file's content. */
export function rawConfigFrom(data: unknown, file = '(inline config)', env: NodeJS.ProcessEnv = {}): RawConfig {
  return applyEnvOverrides({ file, data: structuredClone(data), fromEnv: new Map() }, env);
}

function applyEnvOverrides(raw: RawConfig, env: NodeJS.ProcessEnv): RawConfig {
  if (raw.data === null || typeof raw.data !== 'object' || Array.isArray(raw.data)) return raw;
  for (const override of ENV_OVERRIDES) {
    const { variable, path } = override;
    const value = env[variable];
    if (value === undefined || value === '') continue;
    const parentKeys = path.slice(0, -1);
    let target: Record<string, unknown> | undefined = raw.data as Record<string, unknown>;
    for (const [depth, key] of parentKeys.entries()) {
      const next: unknown = target[key];
      if ('onlyKind' in override && depth === parentKeys.length - 1 && (next === null || typeof next !== 'object' || (next as Record<string, unknown>).kind !== override.onlyKind)) {
        target = undefined;
        break;
      }
      if (next === undefined) {
        const isLast = depth === parentKeys.length - 1;
        target[key] = isLast && 'createParent' in override ? { ...override.createParent } : {};
      } else if (next === null || typeof next !== 'object' || Array.isArray(next)) {
        // The section itself is wrong; the schema reports it. Writing the value anywhere else would invent keys.
        target = undefined;
        break;
      } else if ('createParent' in override && depth === parentKeys.length - 1) {
        // e.g. CLOUDLET_AMQP_URL on a host whose file says `kind: local`: the variable is for other tools
        // (a protocol plugin, the CLI on another config); it must not turn this config invalid.
        const kind = (next as Record<string, unknown>).kind;
        if (kind !== undefined && kind !== override.createParent.kind) {
          target = undefined;
          break;
        }
      }
      target = target[key] as Record<string, unknown>;
    }
    if (!target) continue;
    target[path[path.length - 1] as string] = value;
    raw.fromEnv.set(formatPath(path), variable);
  }
  return raw;
}

export interface CoreValidation {
  config: CoreConfig | undefined;
  problems: ConfigProblem[];
  /** The well-formed plugin entries with their config index, even when other parts of the config are not. */
  pluginEntries: IndexedPluginEntry[];
  /** The well-formed pool overrides, likewise: their checks against the plugins run in the same pass. */
  pools: Record<string, PoolOverride>;
  /** Every message type named under `pools` (well-formed or not), for the check that a plugin handles it. */
  poolTypes: string[];
}

export function validateCoreConfig(raw: RawConfig): CoreValidation {
  const fileForPath = (path: string) => {
    for (const [overridden, variable] of raw.fromEnv) {
      if (path === overridden || path.startsWith(`${overridden}.`)) return `env ${variable}`;
    }
    return undefined;
  };
  const parsed = coreConfigSchema.safeParse(raw.data);
  if (parsed.success) {
    return { config: parsed.data, problems: [], pluginEntries: parsed.data.plugins.map((entry, index) => ({ index, entry })), pools: parsed.data.pools, poolTypes: Object.keys(parsed.data.pools) };
  }

  const problems = problemsFromZod(parsed.error.issues, raw.data, {
    file: raw.file,
    code: 'CONFIG_INVALID',
    schema: coreConfigSchema,
    fileForPath,
  });
  // Keep going with every usable plugin entry, so plugin problems are reported in the same run.
  const pluginsValue = raw.data && typeof raw.data === 'object' ? (raw.data as { plugins?: unknown }).plugins : undefined;
  const pluginEntries: IndexedPluginEntry[] = [];
  if (Array.isArray(pluginsValue)) {
    for (const [index, value] of pluginsValue.entries()) {
      const entry = pluginEntrySchema.safeParse(value);
      if (entry.success) pluginEntries.push({ index, entry: entry.data });
    }
  }
  const pools: Record<string, PoolOverride> = {};
  const poolTypes: string[] = [];
  const poolsValue = raw.data && typeof raw.data === 'object' ? (raw.data as { pools?: unknown }).pools : undefined;
  if (poolsValue && typeof poolsValue === 'object' && !Array.isArray(poolsValue)) {
    for (const [type, value] of Object.entries(poolsValue)) {
      if (!messageTypeSchema.safeParse(type).success) continue;
      poolTypes.push(type);
      const override = poolOverrideSchema.safeParse(value);
      if (override.success) pools[type] = override.data;
    }
  }
  return { config: undefined, problems, pluginEntries, pools, poolTypes };
}

/** Where the CLI and agent look for a config when none is named. */
export function defaultConfigCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  return [env.CLOUDLET_CONFIG, 'cloudlet.yaml', '/etc/cloudlet/cloudlet.yaml'].filter((f): f is string => typeof f === 'string' && f !== '');
}
