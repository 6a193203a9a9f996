/**
 * Loads the plugins a host config names and checks them, all before any plugin hook runs: each failure is
 * a problem with its own code, and every problem is collected so one run reports them all.
 */
import { stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import semver from 'semver';
import { CloudletError, thrownMessage } from '../errors.ts';
import { CORE_API_VERSION } from '../version.ts';
import { PLUGIN_BRAND, pluginKit, type CloudletPlugin } from '../plugin-api.ts';
import type { IndexedPluginEntry } from '../config/load.ts';
import { type ConfigProblem, problemsFromZod } from '../config/problems.ts';
import { definitionKeysAt, pluginDefinitionSchema } from './definition-schema.ts';
import { nearest } from '../nearest.ts';
import { resolvePluginSpecifier, type PluginSourceKind } from './resolve.ts';
import { checkPluginSet } from './checks.ts';
import { importModule } from '../runtime/import-module.ts';
import { CORE_PLUGIN_URL } from '../../plugins/builtin.ts';

export interface LoadedPlugin {
  /** Index in the config's `plugins` list; -1 for the implicit core plugin. */
  index: number;
  use: string;
  kind: PluginSourceKind | 'core';
  /** Resolved module URL. */
  source: string;
  plugin: CloudletPlugin;
  /** Options after the plugin's schema parsed them (defaults applied). */
  options: unknown;
}

export interface PluginLoadResult {
  /** Loaded plugins in dependency order (a plugin after everything it depends on). */
  plugins: LoadedPlugin[];
  problems: ConfigProblem[];
}

export async function loadPlugins(entries: readonly IndexedPluginEntry[], configFile: string): Promise<PluginLoadResult> {
  const problems: ConfigProblem[] = [];
  const loaded: LoadedPlugin[] = [];

  const core = await importPlugin(CORE_PLUGIN_URL);
  loaded.push({ index: -1, use: 'core', kind: 'core', source: CORE_PLUGIN_URL, plugin: core, options: {} });

  const failedEntries: string[] = [];
  for (const { index, entry } of entries) {
    const problemsBefore = problems.length;
    const at = (suffix = '') => `plugins[${index}]${suffix}`;
    const problem = (error: CloudletError, path = at('.use')): ConfigProblem => ({
      code: error.code,
      file: configFile,
      path,
      message: error.message,
    });
    try {
      const resolved = await resolvePluginSpecifier(entry.use, configFile);
      const plugin = await importPlugin(resolved.url);
      // The API range first: a plugin written for a newer core may use definition keys this one does not
      // know, and its author must hear of the version, not of "unrecognized keys".
      const apiRange = typeof plugin.api === 'string' ? semver.validRange(plugin.api) : null;
      if (apiRange === null || semver.satisfies(CORE_API_VERSION, apiRange, { includePrerelease: true })) {
        const definitionProblems = await checkDefinition(plugin, resolved.url);
        if (definitionProblems.length > 0) {
          problems.push(...definitionProblems.map((message) => ({ code: 'PLUGIN_INVALID', file: configFile, path: at('.use'), message })));
          continue;
        }
      }
      if (!semver.satisfies(CORE_API_VERSION, plugin.api, { includePrerelease: true })) {
        problems.push({
          code: 'PLUGIN_API_MISMATCH',
          file: configFile,
          path: at('.use'),
          message: `${describePlugin(plugin, resolved.url)} supports core API ${plugin.api}; this agent provides ${CORE_API_VERSION}`,
          found: plugin.api,
          allowed: `a range that includes ${CORE_API_VERSION}`,
        });
        continue;
      }
      const optionsResult = validateOptions(plugin, entry.options, configFile, index);
      if (!optionsResult.ok) {
        problems.push(...optionsResult.problems);
        continue;
      }
      loaded.push({ index, use: entry.use, kind: resolved.kind, source: resolved.url, plugin, options: optionsResult.options });
    } catch (thrown) {
      const error = thrown instanceof CloudletError ? thrown : new CloudletError('PLUGIN_IMPORT_FAILED', String(thrown));
      problems.push(problem(error));
    } finally {
      if (problems.length > problemsBefore) failedEntries.push(`plugins[${index}] ("${entry.use}")`);
    }
  }

  const checked = checkPluginSet(loaded, configFile, failedEntries);
  problems.push(...checked.problems);
  return { plugins: checked.ordered, problems };
}

const TYPESCRIPT_AS_COMMONJS = 'a TypeScript plugin is loaded as CommonJS unless the nearest package.json says "type": "module": add one beside it ({"type": "module"}, PLUGINS.md section 10)';

/**
 * A .ts plugin with no `"type": "module"` package.json above it is compiled as CommonJS, and its ESM
 * imports then fail with messages about require() that point nowhere near that fix.
 */
function loadedAsCommonJs(url: string, cause: unknown): boolean {
  if (!/\.tsx?$/.test(new URL(url).pathname)) return false;
  const code = String((cause as { code?: unknown }).code ?? '');
  const message = thrownMessage(cause);
  return code.startsWith('ERR_REQUIRE') || /require\(\)|Cannot use import statement outside a module|exports is not defined/.test(message);
}

/**
 * The path Node could not find, from its ERR_MODULE_NOT_FOUND message: "Cannot find module '<path>'
 * imported from <importer>". The path may hold a quote itself, so it runs to the last "' imported from".
 */
function missingModule(cause: unknown): string | undefined {
  return /^Cannot find (?:module|package) '(.+)' imported from /s.exec(thrownMessage(cause))?.[1];
}

/**
 * `cloudlet/plugin-api` is the compiled module in dist/, which a git checkout has only after `npm run build`
 * (an npm-installed cloudlet ships it). Node's own message names the missing file and nothing to do.
 */
function unbuiltPluginApi(cause: unknown): string | undefined {
  if ((cause as { code?: unknown }).code !== 'ERR_MODULE_NOT_FOUND') return undefined;
  const root = /^(.+)\/dist\/core\/plugin-api\.js$/.exec(missingModule(cause) ?? '')?.[1];
  return root === undefined ? undefined : `cloudlet/plugin-api is the compiled plugin API: run \`npm run build\` in ${root} (a checkout has no dist/ until then)`;
}

function hintFor(url: string, cause: unknown): string {
  const hint = loadedAsCommonJs(url, cause) ? TYPESCRIPT_AS_COMMONJS : unbuiltPluginApi(cause);
  return hint === undefined ? '' : `; ${hint}`;
}

async function importPlugin(url: string): Promise<CloudletPlugin> {
  let module: { default?: unknown };
  try {
    module = await importModule<{ default?: unknown }>(url);
  } catch (cause) {
    // Only the plugin's own module missing is "not found"; a module it imports being missing is an import
    // failure. Node says "Cannot find module '<missing>' imported from <importer>": the importer may be the
    // plugin, so only the quoted path counts.
    const notFound =
      (cause as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' && missingModule(cause) === fileURLToPath(url);
    throw new CloudletError(
      notFound ? 'PLUGIN_NOT_FOUND' : 'PLUGIN_IMPORT_FAILED',
      `importing plugin module ${url} failed: ${thrownMessage(cause)}${hintFor(url, cause)}`,
      { cause, details: { url } },
    );
  }
  let candidate = module.default;
  // A factory receives the agent's zod and helpers: plugins outside any npm project need no imports.
  if (typeof candidate === 'function') {
    // A handler named in `use:` by mistake takes (payload, ctx); a factory takes the kit alone. Not called:
    // it would run handler code at load, and fail on a kit that is no context.
    if (candidate.length >= 2) {
      throw new CloudletError(
        'PLUGIN_INVALID',
        `${url} default-exports a function of ${candidate.length} parameters, like a handler (payload, ctx); a plugin module default-exports definePlugin(…) or a factory (kit) => kit.definePlugin(…): name the plugin's own module in "use", and its handlers in its "messages"`,
        { details: { url } },
      );
    }
    try {
      candidate = await (candidate as (kit: typeof pluginKit) => unknown)(pluginKit);
    } catch (cause) {
      throw new CloudletError(
        'PLUGIN_IMPORT_FAILED',
        `plugin factory in ${url} threw: ${thrownMessage(cause)} (a function default export is called as a factory (kit) => kit.definePlugin(…); if this is a handler module, name the plugin's own module in "use")`,
        { cause, details: { url } },
      );
    }
  }
  if (typeof candidate !== 'object' || candidate === null) {
    throw new CloudletError(
      'PLUGIN_INVALID',
      `${url} must default-export a plugin made with definePlugin(), or a function (kit) => kit.definePlugin(…); found ${candidate === null ? 'null' : typeof candidate}`,
      { details: { url } },
    );
  }
  return candidate as CloudletPlugin;
}

/** Shape, handler modules and brand; returns readable problems (empty when the definition is fine). */
async function checkDefinition(plugin: CloudletPlugin, url: string): Promise<string[]> {
  const parsed = pluginDefinitionSchema.safeParse(plugin);
  if (!parsed.success) {
    return parsed.error.issues.flatMap((issue) => {
      const where = issue.path.join('.');
      if (issue.code !== 'unrecognized_keys') return [`plugin in ${url}: "${where || '(definition)'}" ${issue.message}`];
      // A misspelling: named, with the key it most likely meant and every key allowed there.
      const allowed = definitionKeysAt(issue.path) ?? [];
      return issue.keys.map((key) => {
        const meant = nearest(key, allowed);
        return `plugin in ${url}: unknown key "${key}" in ${where ? `"${where}"` : 'the definition'}${meant ? ` (did you mean "${meant}"?)` : ''}; allowed: ${allowed.join(', ')}`;
      });
    });
  }
  const problems: string[] = [];
  if (!(PLUGIN_BRAND in plugin)) problems.push(`plugin in ${url} was not made with definePlugin(); wrap the definition in it`);
  for (const capability of Object.keys(plugin.capabilityModules ?? {})) {
    if (!(plugin.provides ?? []).includes(capability)) {
      problems.push(`plugin "${plugin.name}" has a capability module for "${capability}" but does not list it in "provides"`);
    }
  }
  // A handler sees only its own plugin's requests in flight: another plugin's ids are none of its business.
  const ownTypes = Object.keys(plugin.messages ?? {});
  for (const [type, message] of Object.entries(plugin.messages ?? {})) {
    for (const seen of message.seesInFlight ?? []) {
      if (!ownTypes.includes(seen)) {
        problems.push(`message "${type}" of plugin "${plugin.name}": seesInFlight names "${seen}", which is not one of this plugin's message types (${ownTypes.join(', ')})`);
      }
    }
  }
  const modules = [
    ...Object.entries(plugin.messages ?? {}).map(([type, message]) => ({ what: `message "${type}"`, url: message.handler })),
    ...Object.entries(plugin.capabilityModules ?? {}).map(([capability, url]) => ({ what: `capability "${capability}"`, url })),
  ];
  for (const { what, url } of modules) {
    const handler = String(url);
    let handlerUrl: URL;
    try {
      handlerUrl = new URL(handler);
    } catch {
      problems.push(`${what} of plugin "${plugin.name}": module "${handler}" is not an absolute URL; write new URL('./handler.ts', import.meta.url)`);
      continue;
    }
    if (handlerUrl.protocol === 'file:') {
      const info = await stat(fileURLToPath(handlerUrl)).catch(() => undefined);
      if (!info?.isFile()) problems.push(`${what} of plugin "${plugin.name}": module ${fileURLToPath(handlerUrl)} does not exist`);
    }
  }
  return problems;
}

function validateOptions(
  plugin: CloudletPlugin,
  raw: unknown,
  configFile: string,
  index: number,
): { ok: true; options: unknown } | { ok: false; problems: ConfigProblem[] } {
  const where = { code: 'PLUGIN_OPTIONS_INVALID', file: configFile, path: `plugins[${index}].options` };
  if (!plugin.options) {
    const isEmptyObject = typeof raw === 'object' && raw !== null && !Array.isArray(raw) && Object.keys(raw).length === 0;
    if (raw === undefined || isEmptyObject) return { ok: true, options: {} };
    return { ok: false, problems: [{ ...where, message: `plugin "${plugin.name}" takes no options`, allowed: 'no "options" key' }] };
  }
  const parsed = plugin.options.safeParse(raw ?? {});
  if (parsed.success) {
    // Every pool's threads receive the options: a schema whose transform makes functions or class
    // instances would otherwise pass here and fail every message as a crashed worker.
    try {
      structuredClone(parsed.data);
    } catch (error) {
      const message = `plugin "${plugin.name}": its options schema produced a value that cannot be copied to a worker thread (${thrownMessage(error)}); this is a bug in the plugin, not in the config`;
      return { ok: false, problems: [{ ...where, message, allowed: 'options made of plain data (objects, arrays, strings, numbers, booleans, null)' }] };
    }
    return { ok: true, options: parsed.data };
  }
  return {
    ok: false,
    problems: problemsFromZod(parsed.error.issues, raw ?? {}, {
      file: configFile,
      code: 'PLUGIN_OPTIONS_INVALID',
      schema: plugin.options,
      pathPrefix: ['plugins', index, 'options'],
    }),
  };
}

/**
 * `plugin "name" version`, or the module's URL where the definition lacks them: the API range is checked
 * before the shape, and a plugin written for a newer core may not have the fields this one requires.
 */
function describePlugin(plugin: CloudletPlugin, url: string): string {
  const { name, version } = plugin as { name?: unknown; version?: unknown };
  if (typeof name !== 'string') return `the plugin in ${url}`;
  return typeof version === 'string' ? `plugin "${name}" ${version}` : `plugin "${name}"`;
}
