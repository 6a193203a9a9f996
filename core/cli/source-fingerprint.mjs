// A hash of cloudlet's own sources (core/, plugins/, workers/). scripts/build.mjs records it in
// dist/BUILD.json; the launcher (bin.js) runs the compiled dist/ only while the sources still hash the same,
// so an edited checkout never runs stale JavaScript. Contents, not mtimes: `npm pack` resets every mtime.
// Plain JavaScript because the launcher needs it before any TypeScript loader exists.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const SOURCE_FOLDERS = ['core', 'plugins', 'workers'];
/**
 * Only code counts: an editor's swap or backup file in a checkout (which `npm pack` leaves out) must not make
 * dist/ look stale for good.
 */
const CODE = /\.(?:ts|mts|js|mjs)$/;

/** @param {string} root the package root (a path) */
export function sourceFingerprint(root) {
  const hash = createHash('sha256');
  for (const folder of SOURCE_FOLDERS) {
    for (const file of listFiles(join(root, folder)).sort()) {
      hash.update(relative(root, file)).update('\0').update(readFileSync(file)).update('\0');
    }
  }
  return hash.digest('hex');
}

function listFiles(dir) {
  const files = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...listFiles(path));
    else if (entry.isFile() && CODE.test(entry.name)) files.push(path);
  }
  return files;
}

/** The package root: two folders above this file (core/cli/). */
export const PACKAGE_ROOT_PATH = fileURLToPath(new URL('../../', import.meta.url));
