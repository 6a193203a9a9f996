/**
 * Run by test/core/pools.test.ts in a child `node` with options a worker refuses when they are passed to it
 * explicitly (--max-old-space-size): the real PoolManager runs test.echo and test.thread and prints one JSON
 * line with the outcomes.
 */
import { defaultPoolSettings } from '../../core/config/schema.ts';
import { PoolManager } from '../../core/pools.ts';

const handlerUrl = new URL('../fixtures/plugins/testkit/handlers.ts', import.meta.url).href;
const workerData = {
  handlerUrl,
  pluginName: 'testkit',
  options: { greeting: 'hi' },
  host: { id: 'flags-host', agentVersion: '0.0.0', startedAt: Date.now() },
  plugins: [],
  providers: {},
  logLevel: 'warn' as const,
};
// test.thread's pool is made first and starts no thread (minThreads 0): its first message meets the refusal.
// test.echo's starts one at once (minThreads 1): the PoolManager's constructor meets it.
const pools = new PoolManager([
  { type: 'test.thread', settings: { ...defaultPoolSettings, minThreads: 0, maxThreads: 1 }, workerData },
  { type: 'test.echo', settings: { ...defaultPoolSettings, minThreads: 1, maxThreads: 1 }, workerData },
]);
const deadline = () => Date.now() + 20_000;
const results = {
  echo: await pools.run({ id: '1', type: 'test.echo', payload: { value: 7 }, deadline: deadline() }),
  thread: await pools.run({ id: '2', type: 'test.thread', payload: {}, deadline: deadline() }),
};
await pools.destroy();
console.log(JSON.stringify(results));
