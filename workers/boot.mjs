// The file tinypool starts in each worker thread. It holds the only runtime-specific step of the worker
// side. Compiled (dist/workers/, next to handler-worker.js): plain JavaScript, no loader. From the sources:
// Deno runs TypeScript natively; Node needs tsx's loader registered inside the thread, because Node 20 does
// not pass `--import` hooks on to worker threads. (A TypeScript plugin under the compiled build gets tsx
// registered on demand: core/runtime/import-module.ts.)
import { existsSync } from 'node:fs';
import process from 'node:process';

// tinypool's entry has bound the stand-in by now (tinypool-preload.mjs): handler code gets the real one.
// Nor does a process or thread that handler code starts with this thread's options (fork, new Worker): the
// preload leaves process.execArgv too.
const preload = globalThis[Symbol.for('cloudlet.tinypoolPreload')];
if (preload) {
  process.memoryUsage = preload.real;
  const at = process.execArgv.findIndex((arg, i) => arg === '--import' && process.execArgv[i + 1]?.endsWith('/tinypool-preload.mjs'));
  if (at >= 0) process.execArgv.splice(at, 2);
}

// Deno gives worker threads a global `require` (Node does not): handler code that broke PLUGINS.md's
// "ES modules only" rule would pass on Deno and fail on Node. Taken away, so both runtimes refuse it alike.
if (typeof globalThis.Deno !== 'undefined' && 'require' in globalThis) delete globalThis.require;

const compiled = new URL('./handler-worker.js', import.meta.url);
let runTask;
if (existsSync(compiled)) {
  ({ default: runTask } = await import(compiled.href));
} else {
  if (typeof globalThis.Deno === 'undefined') {
    const { register } = await import('tsx/esm/api');
    register();
  }
  ({ default: runTask } = await import('./handler-worker.ts'));
}
export default runTask;
