// `npm run build` (and `npm pack`, through prepack): compiles core/, plugins/ and workers/ to plain
// JavaScript in dist/, so an installed agent and its worker threads start without a TypeScript loader.
// The sources are erasable-syntax TypeScript, so this is tsc's emit with `.ts` import specifiers rewritten,
// plus the two things tsc does not rewrite: module URLs written as `new URL('./x.ts', import.meta.url)`
// (plugin handlers and capability modules) and the worker entry (workers/boot.mjs, copied as it is).
// dist/BUILD.json records a hash of the sources; core/cli/bin.js runs dist/ only while it still matches.
import { execFileSync } from 'node:child_process';
import { copyFileSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { PACKAGE_ROOT_PATH as root, sourceFingerprint } from '../core/cli/source-fingerprint.mjs';

const dist = join(root, 'dist');
rmSync(dist, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit', cwd: root });

// `new URL('./handlers/x.ts', import.meta.url)` and the template-literal form `./handlers/${name}.ts`.
const MODULE_URL = /(new URL\(\s*(['"`])\.{1,2}\/[^'"`]*?)\.ts\2(\s*,\s*import\.meta\.url\s*\))/g;
let rewritten = 0;
for (const file of listJs(dist)) {
  const text = readFileSync(file, 'utf8');
  const next = text.replace(MODULE_URL, (_, head, quote, tail) => {
    rewritten++;
    return `${head}.js${quote}${tail}`;
  });
  if (next !== text) writeFileSync(file, next);
  if (/new URL\([^)]*\.ts['"`]\s*,\s*import\.meta\.url/.test(next)) throw new Error(`build: ${file} still names a .ts module URL`);
}
for (const file of ['boot.mjs', 'tinypool-preload.mjs']) copyFileSync(join(root, 'workers', file), join(dist, 'workers', file));
writeFileSync(join(dist, 'BUILD.json'), `${JSON.stringify({ sources: sourceFingerprint(root), builtAt: new Date().toISOString() }, null, 2)}\n`);
console.log(`build: dist/ written (${rewritten} module URLs rewritten to .js)`);

function listJs(dir) {
  const files = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...listJs(path));
    else if (entry.name.endsWith('.js')) files.push(path);
  }
  return files;
}
