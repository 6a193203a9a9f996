/**
 * Where this cloudlet installation lives. The same modules run from the sources (`core/…`, under tsx or Deno)
 * and compiled (`dist/core/…`, see scripts/build.mjs), so files outside the code — package.json, config/,
 * docs/ — are found from the package root rather than by a fixed number of `../`.
 */
import { existsSync } from 'node:fs';

/** The folder holding cloudlet's package.json, as a file: URL ending in `/`. */
export const PACKAGE_ROOT: URL = findPackageRoot(new URL('.', import.meta.url));

function findPackageRoot(from: URL): URL {
  for (let dir = from; ; ) {
    // dist/ holds no package.json, so both layouts stop at the same folder.
    if (existsSync(new URL('package.json', dir))) return dir;
    const parent = new URL('..', dir);
    if (parent.href === dir.href) throw new Error(`cloudlet: no package.json above ${from.href}`);
    dir = parent;
  }
}

/** A file of the installation, by its path from the package root (e.g. `config/cloudlet.service`). */
export function packageFile(path: string): URL {
  return new URL(path, PACKAGE_ROOT);
}

/** Which code this process runs: compiled JavaScript (dist/, scripts/build.mjs) or the TypeScript sources. */
export const RUNNING_FROM: 'dist' | 'sources' = new URL(import.meta.url).pathname.endsWith('.js') ? 'dist' : 'sources';
