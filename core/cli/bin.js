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

// A reader that stops early (`cloudlet vm list | head -1`, `cloudlet --help | true`) closes the pipe: what is
// left to print has nobody to read it, which is no failure of the command, so the exit code stays the one
// the command reports (0 when it succeeded) rather than a crash's. Any other error writing the output is said
// in one line, not a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error) => {
    if (error.code === 'EPIPE' || error.code === 'ERR_STREAM_DESTROYED') return;
    if (stream === process.stdout) process.stderr.write(`cloudlet: cannot write the output: ${error.message}\n`);
    process.exit(70);
  });
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
