/**
 * Run by test/deno/worker-under-deno.test.ts with `deno run`: the real PoolManager and worker entry, with a
 * real handler (host-info) and the testkit fixture, under Deno. Prints one JSON line with the outcomes.
 */
import { PoolManager } from '../../core/pools.ts';
import { defaultPoolSettings } from '../../core/config/schema.ts';

const host = { id: 'deno-host', agentVersion: '0.0.0', startedAt: Date.now() };
const plugins = [{ name: 'core', version: '1.0.0', source: 'core', provides: [], messageTypes: ['host-info'] }];
const spec = (type: string, handler: URL, pluginName: string, options: unknown) => ({
  type,
  settings: { ...defaultPoolSettings, maxThreads: 1, timeoutMs: 10_000 },
  workerData: { handlerUrl: handler.href, pluginName, options, host, plugins, providers: {}, logLevel: 'info' as const },
});
const testkit = new URL('../fixtures/plugins/testkit/handlers.ts', import.meta.url);
const pools = new PoolManager([
  spec('host-info', new URL('../../plugins/core/host-info.ts', import.meta.url), 'core', {}),
  spec('test.echo', testkit, 'testkit', { greeting: 'deno says hi' }),
  spec('test.progress', testkit, 'testkit', {}),
  { ...spec('test.sleep', testkit, 'testkit', {}), settings: { ...defaultPoolSettings, maxThreads: 1, timeoutMs: 300 } },
  // Two messages share the one thread; the first spins until its thread is stopped (workers/run-table.ts).
  { ...spec('test.shared', testkit, 'testkit', {}), settings: { ...defaultPoolSettings, maxThreads: 1, tasksPerThread: 2, timeoutMs: 10_000, cancelGraceMs: 100 } },
  spec('test.globals', new URL('./globals-handler.ts', import.meta.url), 'testkit', {}),
]);
const deadline = () => Date.now() + 10_000;
const progress: unknown[] = [];
const results = {
  hostInfo: await pools.run({ id: '1', type: 'host-info', payload: {}, deadline: deadline() }),
  echo: await pools.run({ id: '2', type: 'test.echo', payload: { value: 42 }, deadline: deadline() }),
  progress: await pools.run({ id: '3', type: 'test.progress', payload: { steps: 2 } , deadline: deadline() }, { onProgress: (stage, detail) => progress.push([stage, detail]) }),
  timeout: await pools.run({ id: '4', type: 'test.sleep', payload: { ms: 60_000 }, deadline: deadline() }),
  spinStopped: await pools.run({ id: '5', type: 'test.shared', payload: { do: 'spin' }, deadline: Date.now() + 1_500 }),
  // Answered only if the spinning thread was stopped and replaced.
  afterSpin: await pools.run({ id: '6', type: 'test.shared', payload: { announce: 'after' }, deadline: deadline() }),
  globals: await pools.run({ id: '7', type: 'test.globals', payload: {}, deadline: deadline() }),
  progressSeen: progress,
};
await pools.destroy();
console.log(JSON.stringify(results, (key, value) => (value instanceof Error ? { code: (value as { code?: string }).code, message: value.message } : value)));
