#!/usr/bin/env node
// The installed `cloudlet` command. It runs the compiled JavaScript in dist/ when that was built from exactly
// these sources (scripts/build.mjs; `npm pack` builds it), else the TypeScript sources through tsx. Compiled
// saves Node 20's module-hook thread (~30 MiB per thread) and the compile at start. Kept as plain
// JavaScript because it runs before any loader exists.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT_PATH, sourceFingerprint } from './source-fingerprint.mjs';

function compiledIsCurrent() {
  if (process.env.CLOUDLET_FROM_SOURCE === '1') return false;
  let build;
  try {
    build = JSON.parse(readFileSync(join(PACKAGE_ROOT_PATH, 'dist', 'BUILD.json'), 'utf8'));
  } catch {
    return false; // never built (a checkout): the sources it is
  }
  if (build.sources === sourceFingerprint(PACKAGE_ROOT_PATH)) return true;
  process.emitWarning('dist/ was built from other sources than these; running the sources (run `npm run build` to refresh dist/)', { code: 'CLOUDLET_STALE_DIST' });
  return false;
}

let main;
if (compiledIsCurrent()) {
  ({ main } = await import('../../dist/core/cli/main.js'));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('./main.ts'));
}
process.exitCode = await main(process.argv.slice(2));
// Everything is closed by now; if a stray handle still holds the event loop, do not hang the shell.
setTimeout(() => process.exit(), 2000).unref();
