/** Turns a config's `use:` value into a module URL: a built-in name, a file path or an npm package. */
import { stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { cloudletError } from '../errors.ts';
import { builtinPlugins } from '../../plugins/builtin.ts';

export type PluginSourceKind = 'builtin' | 'path' | 'package';

export interface ResolvedPlugin {
  kind: PluginSourceKind;
  url: string;
}

const PACKAGE_NAME = /^(?:@[a-z0-9-~][a-z0-9-._~]*\/)?[a-z0-9-~][a-z0-9-._~]*(?:\/[a-zA-Z0-9-._~/]+)?$/;

export function classifyPluginSpecifier(use: string): PluginSourceKind {
  if (use.startsWith('./') || use.startsWith('../') || isAbsolute(use) || use.startsWith('file:')) return 'path';
  if (Object.hasOwn(builtinPlugins, use)) return 'builtin';
  return 'package';
}

/**
 * Paths are relative to the config file's folder. Packages are looked up from the config file's folder
 * first (so /etc/cloudlet can hold its own node_modules), then from cloudlet's own installation.
 */
export async function resolvePluginSpecifier(use: string, configFile: string): Promise<ResolvedPlugin> {
  const kind = classifyPluginSpecifier(use);
  const configDir = dirname(resolve(configFile));
  if (kind === 'builtin') return { kind, url: builtinPlugins[use] as string };
  if (kind === 'path') {
    const path = use.startsWith('file:') ? fileURLToPath(use) : resolve(configDir, use);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) {
      throw cloudletError('PLUGIN_NOT_FOUND', `plugin file ${path} does not exist (from "${use}", relative to ${configDir})`, { use, path });
    }
    return { kind, url: pathToFileURL(path).href };
  }
  if (!PACKAGE_NAME.test(use)) {
    throw cloudletError(
      'PLUGIN_NOT_FOUND',
      `"${use}" is not a built-in plugin (${Object.keys(builtinPlugins).join(', ') || 'none'}), a path starting with ./, ../ or /, or a valid npm package name`,
      { use, builtins: Object.keys(builtinPlugins) },
    );
  }
  for (const base of [resolve(configDir, 'package.json'), fileURLToPath(import.meta.url)]) {
    try {
      return { kind, url: pathToFileURL(createRequire(base).resolve(use)).href };
    } catch {
      // not resolvable from this base; try the next one
    }
  }
  try {
    return { kind, url: import.meta.resolve(use) };
  } catch {
    throw cloudletError(
      'PLUGIN_NOT_FOUND',
      `npm package "${use}" is not installed next to the config (${configDir}) or with cloudlet, and it is not a built-in plugin (${Object.keys(builtinPlugins).join(', ') || 'none'})`,
      { use, builtins: Object.keys(builtinPlugins) },
    );
  }
}
