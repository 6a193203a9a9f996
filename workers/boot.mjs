// The file tinypool starts in each worker thread. It holds the only runtime-specific step of the worker
// side: Deno runs TypeScript natively; Node needs tsx's loader registered inside the thread, because
// Node 20 does not pass `--import` hooks on to worker threads.
if (typeof globalThis.Deno === 'undefined') {
  const { register } = await import('tsx/esm/api');
  register();
}
const { default: runTask } = await import('./handler-worker.ts');
export default runTask;
