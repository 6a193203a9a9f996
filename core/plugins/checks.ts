/** Checks across the loaded plugin set: names, message types, error codes, dependencies, capabilities. */
import semver from 'semver';
import { errorCatalogue } from '../errors.ts';
import type { ConfigProblem } from '../config/problems.ts';
import type { LoadedPlugin } from './loader.ts';

export function checkPluginSet(
  loaded: readonly LoadedPlugin[],
  configFile: string,
  /** Config entries that failed to load; a missing dependency may be one of them. */
  failedEntries: readonly string[] = [],
): { ordered: LoadedPlugin[]; problems: ConfigProblem[] } {
  const failedNote =
    failedEntries.length > 0 ? ` It may be one of the entries that failed to load above: ${failedEntries.join(', ')}; fix those first.` : '';
  const problems: ConfigProblem[] = [];
  const path = (p: LoadedPlugin, suffix = '.use') => (p.index < 0 ? '(built-in core plugin)' : `plugins[${p.index}]${suffix}`);
  const add = (code: string, p: LoadedPlugin, message: string, extra: Partial<ConfigProblem> = {}) =>
    problems.push({ code, file: configFile, path: path(p), message, ...extra });

  const byName = new Map<string, LoadedPlugin>();
  for (const p of loaded) {
    const previous = byName.get(p.plugin.name);
    if (previous) {
      add('PLUGIN_DUPLICATE', p, `plugin "${p.plugin.name}" is already loaded by ${path(previous)} ("${previous.use}")`);
      continue;
    }
    byName.set(p.plugin.name, p);
  }
  const unique = [...byName.values()];

  const typeOwner = new Map<string, LoadedPlugin>();
  const codeOwner = new Map<string, LoadedPlugin>();
  for (const p of unique) {
    for (const type of Object.keys(p.plugin.messages ?? {})) {
      const owner = typeOwner.get(type);
      if (owner) {
        add('PLUGIN_MESSAGE_CONFLICT', p, `message type "${type}" is claimed by both "${owner.plugin.name}" (${path(owner)}) and "${p.plugin.name}"`, {
          allowed: 'each message type handled by exactly one plugin on a host',
        });
      } else typeOwner.set(type, p);
    }
    for (const code of Object.keys(p.plugin.errors ?? {})) {
      const owner = codeOwner.get(code);
      if (Object.hasOwn(errorCatalogue, code) || owner) {
        add('PLUGIN_INVALID', p, `error code "${code}" of plugin "${p.plugin.name}" is already defined by ${owner ? `"${owner.plugin.name}"` : 'the core'}`);
      } else codeOwner.set(code, p);
    }
  }

  const capabilityProviders = new Map<string, string[]>();
  for (const p of unique) {
    for (const capability of p.plugin.provides ?? []) capabilityProviders.set(capability, [...(capabilityProviders.get(capability) ?? []), p.plugin.name]);
  }
  for (const p of unique) {
    for (const [dependency, range] of Object.entries(p.plugin.dependencies ?? {})) {
      const target = byName.get(dependency);
      if (!target) {
        add(
          'PLUGIN_DEPENDENCY_MISSING',
          p,
          failedNote
            ? `plugin "${p.plugin.name}" depends on "${dependency}" (${range}), which is not loaded.${failedNote}`
            : `plugin "${p.plugin.name}" depends on "${dependency}" (${range}), which is not in this host's plugin list`,
          failedNote ? {} : { allowed: `add { use: ${dependency} } to plugins` },
        );
      } else if (!semver.satisfies(target.plugin.version, range, { includePrerelease: true })) {
        add('PLUGIN_DEPENDENCY_VERSION', p, `plugin "${p.plugin.name}" needs "${dependency}" ${range}, but ${target.plugin.version} is loaded`, {
          found: target.plugin.version,
          allowed: range,
        });
      }
    }
    for (const capability of p.plugin.requires ?? []) {
      if (!capabilityProviders.has(capability)) {
        const reason = failedNote ? `which no loaded plugin provides.${failedNote}` : 'which no configured plugin provides';
        add('PLUGIN_CAPABILITY_MISSING', p, `plugin "${p.plugin.name}" requires capability "${capability}", ${reason}`, {
          allowed: [...capabilityProviders.keys()].join(', ') || 'no capabilities are provided by the configured plugins',
        });
      }
    }
  }

  // Cross-plugin option checks, for plugins whose dependencies are all here (a missing one is reported above).
  for (const p of unique) {
    const check = p.plugin.checkOptions;
    if (!check || Object.keys(p.plugin.dependencies ?? {}).some((name) => !byName.has(name))) continue;
    let found: readonly { path?: string; message: string; allowed?: string }[];
    try {
      found = check(p.options, { dependencyOptions: dependencyOptionsFor(p, unique) });
    } catch (thrown) {
      found = [{ message: `plugin "${p.plugin.name}" could not check its options: ${thrown instanceof Error ? thrown.message : String(thrown)}` }];
    }
    for (const problem of found) {
      add('PLUGIN_OPTIONS_INVALID', p, problem.message, {
        path: `plugins[${p.index}].options${problem.path ? `.${problem.path}` : ''}`,
        ...(problem.allowed === undefined ? {} : { allowed: problem.allowed }),
      });
    }
  }

  const { ordered, cycle } = dependencyOrder(unique);
  if (cycle) {
    const first = byName.get(cycle[0] as string);
    if (first) add('PLUGIN_DEPENDENCY_CYCLE', first, `plugins depend on each other in a cycle: ${cycle.join(' → ')}`);
  }
  return { ordered, problems };
}

/** Config order, except that a plugin comes after its dependencies (stable topological sort). */
function dependencyOrder(plugins: readonly LoadedPlugin[]): { ordered: LoadedPlugin[]; cycle?: string[] } {
  const byName = new Map(plugins.map((p) => [p.plugin.name, p]));
  const ordered: LoadedPlugin[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  let cycle: string[] | undefined;
  const visit = (p: LoadedPlugin, trail: string[]) => {
    const name = p.plugin.name;
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') {
      cycle ??= [...trail.slice(trail.indexOf(name)), name];
      return;
    }
    state.set(name, 'visiting');
    for (const dependency of Object.keys(p.plugin.dependencies ?? {})) {
      const target = byName.get(dependency);
      if (target) visit(target, [...trail, name]);
    }
    state.set(name, 'done');
    ordered.push(p);
  };
  for (const p of plugins) visit(p, []);
  return cycle ? { ordered, cycle } : { ordered };
}

/**
 * The validated options of the plugins `plugin` declares in `dependencies` (only those: another plugin's
 * options may hold secrets), as frozen copies: what hooks and `checkOptions` see as `dependencyOptions`.
 */
export function dependencyOptionsFor(plugin: LoadedPlugin, loaded: readonly LoadedPlugin[]): Readonly<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(plugin.plugin.dependencies ?? {})) {
    const dependency = loaded.find((p) => p.plugin.name === name);
    if (dependency) out[name] = deepFreeze(structuredClone(dependency.options));
  }
  return Object.freeze(out);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const item of Object.values(value)) deepFreeze(item);
  }
  return value;
}
