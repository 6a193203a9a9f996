/** Which built-in plugins have landed: a benchmark of a part that is not there yet reports "pending". */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { builtinPlugins } from '../../plugins/builtin.ts';

/** A built-in plugin is there when plugins/builtin.ts names it and its module exists. */
export function pluginLanded(name: string): boolean {
  const url = builtinPlugins[name];
  return url !== undefined && existsSync(fileURLToPath(url));
}
