/** Turns a config's `use:` value into a module URL: a built-in name, a file path or an npm package. */
import { stat } from 'node:fs/promises';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
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
    const path = use.startsWith('file:') ? localFilePath(use) : resolve(configDir, use);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) {
      const what = info?.isDirectory() ? 'is a directory; name the plugin module file (e.g. index.ts) inside it' : 'does not exist';
      throw cloudletError('PLUGIN_NOT_FOUND', `plugin file ${path} ${what} (from "${use}", relative to ${configDir})`, { use, path });
    }
    return { kind, url: pathToFileURL(path).href };
  }
  if (PACKAGE_NAME.test(use) && hasDotSegment(use)) {
    throw cloudletError('PLUGIN_NOT_FOUND', `"${use}" is not a valid npm package specifier: a package subpath may not have empty, "." or ".." parts`, { use });
  }
  if (!PACKAGE_NAME.test(use)) {
    throw cloudletError(
      'PLUGIN_NOT_FOUND',
      `"${use}" is not a built-in plugin (${Object.keys(builtinPlugins).join(', ') || 'none'}), a path starting with ./, ../ or /, or a valid npm package name`,
      { use, builtins: Object.keys(builtinPlugins) },
    );
  }
  const besideConfig = await findInstalledPackage(use, configDir);
  if (besideConfig) return { kind, url: pathToFileURL(besideConfig).href };
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

/** The path a `file:` URL names; one Node cannot map to a local path is the config's fault, said plainly. */
function localFilePath(use: string): string {
  try {
    return fileURLToPath(use);
  } catch (error) {
    throw cloudletError('PLUGIN_NOT_FOUND', `"${use}" is not a local file URL (${(error as Error).message}); write file:///absolute/path, or a path starting with ./, ../ or /`, { use });
  }
}

/**
 * Whether a package specifier's subpath climbs or stays put ("pkg/../x", "pkg/./x", "pkg//x"). Such a
 * subpath would be joined onto the package's folder and could name any file on the host.
 */
function hasDotSegment(specifier: string): boolean {
  const parts = specifier.split('/').slice(specifier.startsWith('@') ? 2 : 1);
  return parts.some((part) => part === '' || part === '.' || part === '..');
}

type ExportsField = string | null | { [key: string]: ExportsField } | ExportsField[];

/**
 * Finds `name` in a node_modules folder at or above `fromDir` and returns its ESM entry file, following
 * package.json `exports` (conditions import, node, default) or `main`. Node's own resolver cannot be
 * pointed at an arbitrary folder from an ES module, and createRequire misses import-only packages.
 */
async function findInstalledPackage(specifier: string, fromDir: string): Promise<string | undefined> {
  const parts = specifier.split('/');
  const nameLength = specifier.startsWith('@') ? 2 : 1;
  const name = parts.slice(0, nameLength).join('/');
  const subpath = parts.length > nameLength ? `./${parts.slice(nameLength).join('/')}` : '.';
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const packageDir = join(dir, 'node_modules', name);
    const manifest = await readFile(join(packageDir, 'package.json'), 'utf8').then(
      (text) => JSON.parse(text) as { exports?: ExportsField; main?: string },
      () => undefined,
    );
    if (manifest) {
      const target = manifest.exports !== undefined ? exportTarget(manifest.exports, subpath) : subpath === '.' ? (manifest.main ?? 'index.js') : subpath;
      return target ? join(packageDir, target) : undefined;
    }
    if (dirname(dir) === dir) return undefined;
  }
}

function exportTarget(exports: ExportsField, subpath: string): string | undefined {
  const isSubpathMap = typeof exports === 'object' && exports !== null && !Array.isArray(exports) && Object.keys(exports).some((k) => k.startsWith('.'));
  const entry = isSubpathMap ? (exports as Record<string, ExportsField>)[subpath] : subpath === '.' ? exports : undefined;
  return pickCondition(entry);
}

function pickCondition(entry: ExportsField | undefined): string | undefined {
  if (typeof entry === 'string') return entry;
  if (Array.isArray(entry)) return entry.map(pickCondition).find((t) => t !== undefined);
  if (entry && typeof entry === 'object') {
    for (const condition of ['import', 'node', 'default']) {
      const target = pickCondition(entry[condition]);
      if (target) return target;
    }
  }
  return undefined;
}
