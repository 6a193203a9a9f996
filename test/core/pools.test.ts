import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test, { type TestContext } from 'node:test';
import { defaultPoolSettings } from '../../core/config/schema.ts';
import { Cancellation } from '../../core/cancellation.ts';
import { cloudletError, registerPluginErrors } from '../../core/errors.ts';
import type { PoolSettings } from '../../core/plugin-api.ts';
import { PoolManager, type RunOutcome } from '../../core/pools.ts';

const handlerUrl = new URL('../fixtures/plugins/testkit/handlers.ts', import.meta.url).href;
const TYPES = ['test.echo', 'test.sleep', 'test.spin', 'test.crash', 'test.crash-after', 'test.exit-after', 'test.exit', 'test.shared', 'test.fail', 'test.progress', 'test.thread'];

registerPluginErrors({ TESTKIT_REFUSED: { message: 'the testkit refused on purpose', retryable: false } });

function makePools(t: TestContext, overrides: Partial<Record<string, Partial<PoolSettings>>> = {}): PoolManager {
  const pools = new PoolManager(
    TYPES.map((type) => ({
      type,
      settings: { ...defaultPoolSettings, maxThreads: 1, ...overrides[type] },
      workerData: {
        handlerUrl,
        pluginName: 'testkit',
        options: { greeting: 'hi' },
        host: { id: 'pool-host', agentVersion: '0.0.0', startedAt: Date.now() },
        plugins: [],
        providers: {},
        logLevel: 'debug',
      },
    })),
    new Map([['testkit', new Set(['TESTKIT_REFUSED'])]]),
  );
  t.after(() => pools.destroy());
  return pools;
}

let seq = 0;
function task(type: string, payload: unknown = {}, deadlineMs = 30_000) {
  return { id: `t-${++seq}`, type, payload, deadline: Date.now() + deadlineMs };
}

function errorCode(outcome: RunOutcome): string | undefined {
  return outcome.ok ? undefined : outcome.error.code;
}

/** Waits until `type`'s pool has `count` threads; fails after 10 s. */
async function untilThreads(pools: PoolManager, type: string, count: number): Promise<void> {
  const threads = () => pools.stats().find((s) => s.type === type)?.threads;
  const until = Date.now() + 10_000;
  while (threads() !== count && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  assert.equal(threads(), count, `"${type}" should have ${count} thread(s)`);
}

/** A log that records the `started` lines of test.shared and test.sleep handlers into `events`. */
function startLog(events: string[]) {
  const none = () => undefined;
  return { trace: none, debug: none, warn: none, error: none, info: (obj: object) => void events.push(`start ${String((obj as { started?: unknown }).started)}`) };
}

test('pools — a handler result comes back with the plugin options and host in its context', async (t) => {
  const pools = makePools(t);
  const outcome = await pools.run(task('test.echo', { value: [1, 'two'] }));
  assert.equal(outcome.ok, true);
  assert.deepEqual((outcome as { result: Record<string, unknown> }).result.value, [1, 'two']);
  assert.equal((outcome as { result: Record<string, unknown> }).result.greeting, 'hi');
  assert.equal((outcome as { result: Record<string, unknown> }).result.host, 'pool-host');
});

test('pools — a declared error code crosses the worker boundary with its details', async (t) => {
  const pools = makePools(t);
  const outcome = await pools.run(task('test.fail', { declared: true }));
  assert.equal(errorCode(outcome), 'TESTKIT_REFUSED');
  assert.deepEqual(!outcome.ok && outcome.error.details, { asked: true });
  assert.equal(!outcome.ok && outcome.error.retryable, false);
});

test('pools — an undeclared error code becomes HANDLER_ERROR that names the thrown code', async (t) => {
  const pools = makePools(t);
  const outcome = await pools.run(task('test.fail', { declared: false }));
  assert.equal(errorCode(outcome), 'HANDLER_ERROR');
  assert.equal((!outcome.ok && (outcome.error.details as { thrownCode?: string }).thrownCode), 'SOMETHING_ELSE');
});

test('pools — a handler past its timeout is cancelled through its signal and the pool keeps serving', async (t) => {
  const pools = makePools(t, { 'test.sleep': { timeoutMs: 3_000 } });
  // Warm the thread first: the timeout counts from acceptance, and a cold thread start under load is slow.
  assert.equal((await pools.run(task('test.sleep', { ms: 1 }))).ok, true);
  const outcome = await pools.run(task('test.sleep', { ms: 60_000 }));
  assert.equal(errorCode(outcome), 'TIMEOUT');
  const after = await pools.run(task('test.sleep', { ms: 1 }));
  assert.equal(after.ok, true);
});

test('pools — a handler stuck on the CPU is terminated after the cancel grace and its thread replaced', async (t) => {
  const pools = makePools(t, { 'test.spin': { timeoutMs: 1_000, cancelGraceMs: 200 } });
  const outcome = await pools.run(task('test.spin'));
  assert.equal(errorCode(outcome), 'TIMEOUT');
  // The same pool answers again: the spinning thread was terminated, not left occupying the only slot.
  const again = await pools.run(task('test.spin'));
  assert.equal(errorCode(again), 'TIMEOUT');
  const echo = await pools.run(task('test.echo'));
  assert.equal(echo.ok, true);
});

test('pools — the request deadline bounds the run when it comes before the pool timeout', async (t) => {
  const pools = makePools(t);
  const outcome = await pools.run(task('test.sleep', { ms: 60_000 }, 150));
  assert.equal(errorCode(outcome), 'DEADLINE_EXCEEDED');
});

test('pools — an uncaught exception in a worker is answered with WORKER_CRASHED and the pool recovers', async (t) => {
  const pools = makePools(t);
  const outcome = await pools.run(task('test.crash'));
  assert.equal(errorCode(outcome), 'WORKER_CRASHED');
  assert.match(!outcome.ok ? outcome.error.message : '', /crashed on purpose/);
  const after = await pools.run(task('test.crash'));
  assert.equal(errorCode(after), 'WORKER_CRASHED');
});

test('pools — a thread that dies with no task on it (a timer the handler left behind throws) is replaced; the agent stays up', async (t) => {
  const pools = makePools(t);
  for (let i = 0; i < 2; i++) {
    assert.deepEqual(await pools.run(task('test.crash-after')), { ok: true, result: { answered: true } });
    // The thread dies 20 ms after answering. tinypool reports a death with no task to the pool itself; with
    // nobody listening, that report would be an uncaught exception in the main thread (this test process).
    await untilThreads(pools, 'test.crash-after', 0);
  }
});

test('pools — a thread that exits with no task on it is replaced, not handed the next message', async (t) => {
  const pools = makePools(t, { 'test.exit-after': { timeoutMs: 5_000 } });
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await pools.run(task('test.exit-after')), { ok: true, result: { answered: true } });
    // The thread exits 20 ms after answering; tinypool does not notice an exit by itself, and would keep
    // the dead thread (and hand it the next message).
    await untilThreads(pools, 'test.exit-after', 0);
  }
});

test('pools — a worker that calls process.exit is detected (no hang) and replaced', async (t) => {
  const pools = makePools(t, { 'test.exit': { timeoutMs: 60_000 } });
  const outcome = await pools.run(task('test.exit'));
  assert.equal(errorCode(outcome), 'WORKER_CRASHED');
  const echo = await pools.run(task('test.echo'));
  assert.equal(echo.ok, true);
});

test('pools — a crash in one message type leaves the other types untouched', async (t) => {
  const pools = makePools(t);
  const [crash, echo] = await Promise.all([pools.run(task('test.crash')), pools.run(task('test.echo', { value: 1 }))]);
  assert.equal(errorCode(crash), 'WORKER_CRASHED');
  assert.equal(echo.ok, true);
});

test('pools — a full queue answers BUSY at once instead of growing', async (t) => {
  const pools = makePools(t, { 'test.sleep': { maxThreads: 1, maxQueue: 2 } });
  const running = [1, 2, 3].map(() => pools.run(task('test.sleep', { ms: 400 })));
  // Give the first one time to occupy the thread; the next two wait in the queue.
  await new Promise((r) => setTimeout(r, 100));
  const refused = await pools.run(task('test.sleep', { ms: 1 }));
  assert.equal(errorCode(refused), 'BUSY');
  assert.equal(refused.ok === false && refused.error.retryable, true);
  const finished = await Promise.all(running);
  assert.deepEqual(
    finished.map((o) => o.ok),
    [true, true, true],
  );
});

test('pools — a cancelled message is answered with the reason it was cancelled for', async (t) => {
  const pools = makePools(t);
  const cancellation = new Cancellation();
  const pending = pools.run(task('test.sleep', { ms: 60_000 }), { cancellation });
  setTimeout(() => cancellation.cancel(cloudletError('SHUTTING_DOWN', 'the agent is stopping')), 100);
  const outcome = await pending;
  assert.equal(errorCode(outcome), 'SHUTTING_DOWN');
  // Cancelled before it starts: not run at all, same answer.
  const early = await pools.run(task('test.sleep', { ms: 60_000 }), { cancellation });
  assert.equal(errorCode(early), 'SHUTTING_DOWN');
});

test('pools — a handler that looks at its signal only after a cancel arrived sees it aborted, with the reason', async (t) => {
  const pools = makePools(t, { 'test.sleep': { cancelGraceMs: 5_000 } });
  const cancellation = new Cancellation();
  const lines: Array<Record<string, unknown>> = [];
  // Cancelled once the handler says it started (not on a timer: a loaded machine may start it late).
  const info = (obj: object) => {
    lines.push(obj as Record<string, unknown>);
    if ((obj as { started?: boolean }).started) cancellation.cancel(cloudletError('SHUTTING_DOWN', 'the agent is stopping'));
  };
  const log = { trace: () => undefined, debug: () => undefined, info, warn: () => undefined, error: () => undefined };
  const pending = pools.run(task('test.sleep', { ms: 400, ignoreAbort: true, reportSignal: true, announce: true }), { cancellation, log });
  assert.equal(errorCode(await pending), 'SHUTTING_DOWN');
  assert.deepEqual(lines, [{ started: true }, { aborted: true, reason: 'SHUTTING_DOWN' }]);
});

test('pools — a cancel sent while the pool\'s thread is still starting reaches the handler, or the handler never runs', async (t) => {
  const pools = makePools(t, { 'test.sleep': { cancelGraceMs: 5_000 } });
  const cancellation = new Cancellation();
  const lines: Array<Record<string, unknown>> = [];
  const log = { trace: () => undefined, debug: () => undefined, info: (obj: object) => void lines.push(obj as Record<string, unknown>), warn: () => undefined, error: () => undefined };
  // The pool has no thread yet: it starts one for this message, which takes a few hundred ms (tsx, imports).
  const pending = pools.run(task('test.sleep', { ms: 400, ignoreAbort: true, reportSignal: true }), { cancellation, log });
  setTimeout(() => cancellation.cancel(cloudletError('SHUTTING_DOWN', 'the agent is stopping')), 20);
  assert.equal(errorCode(await pending), 'SHUTTING_DOWN');
  // Either the abort reached the thread before the message did (then it never ran), or the handler saw it.
  assert.ok(lines.length === 0 || (lines.length === 1 && lines[0]?.aborted === true && lines[0]?.reason === 'SHUTTING_DOWN'), JSON.stringify(lines));
});

test('pools — a message id cancelled once runs when it is sent again (a retry), on whichever thread takes it', async (t) => {
  const pools = makePools(t, { 'test.sleep': { maxThreads: 2 } });
  const cancellation = new Cancellation();
  const first = task('test.sleep', { ms: 5_000 });
  // X on one thread, Z on the other: the abort for X reaches Z's thread too, which is not running X.
  const x = pools.run(first, { cancellation });
  const z = pools.run(task('test.sleep', { ms: 1_200 }));
  await new Promise((resolve) => setTimeout(resolve, 600));
  cancellation.cancel(cloudletError('SHUTTING_DOWN', 'the agent is stopping'));
  assert.equal(errorCode(await x), 'SHUTTING_DOWN');
  // X's thread takes a long one; the retry of X waits for Z's thread.
  const w = pools.run(task('test.sleep', { ms: 3_000 }));
  const retry = await pools.run({ ...first, deadline: Date.now() + 30_000, payload: { ms: 0 } });
  assert.deepEqual(retry, { ok: true, result: { slept: 0 } });
  assert.equal((await z).ok, true);
  assert.equal((await w).ok, true);
});

test('pools — tinypool gets a memoryUsage that reads nothing after each task; handler code gets the real one', async (t) => {
  const pools = makePools(t);
  const outcomes = [];
  for (let i = 0; i < 3; i++) outcomes.push(await pools.run(task('test.thread')));
  const results = outcomes.map((outcome) => (outcome.ok ? (outcome.result as { rss: number; tinypoolMemoryUsageCalls: number | null; execArgv: string[] }) : assert.fail(errorCode(outcome))));
  for (const result of results) assert.ok(result.rss > 0, `the handler saw rss ${result.rss}`);
  // Nor does a child process a handler forks with its thread's options get the preload.
  assert.ok(!results[0]?.execArgv.some((arg) => arg.includes('tinypool-preload')), results[0]?.execArgv.join(' '));
  // One thread ran all three: tinypool called the stand-in after the first two. If this fails with null or 0,
  // tinypool no longer calls memoryUsage per task and workers/tinypool-preload.mjs can go.
  assert.equal(results[2]?.tinypoolMemoryUsageCalls, 2);
});

test('pools — an agent started with Node options a worker refuses (--max-old-space-size) still runs messages', async () => {
  const script = fileURLToPath(new URL('../support/run-pool-with-node-options.ts', import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, ['--max-old-space-size=300', '--import', 'tsx', script], { timeout: 60_000 });
  const results = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, RunOutcome>;
  assert.equal(results.echo?.ok, true, JSON.stringify(results.echo));
  const thread = results.thread?.ok ? (results.thread.result as { rss: number; tinypoolMemoryUsageCalls: number | null }) : assert.fail(JSON.stringify(results.thread));
  assert.ok(thread.rss > 0);
  // The pool threads inherit the options as they are, without the preload (refused as a list), whether the
  // refusal came as a pool started its threads or at its first message.
  assert.equal(thread.tinypoolMemoryUsageCalls, null);
});

test('pools — a slow message type does not delay a fast one', async (t) => {
  const pools = makePools(t, { 'test.sleep': { maxThreads: 1, maxQueue: 10 } });
  const slow = [1, 2, 3].map(() => pools.run(task('test.sleep', { ms: 1_000 })));
  const order: string[] = [];
  void Promise.all(slow).then(() => order.push('slow'));
  const fast = await pools.run(task('test.echo', { value: 'fast' }));
  order.push('fast');
  assert.equal(fast.ok, true);
  // The fast reply arrived while three slow ones (3 s of work on one thread) were still queued.
  assert.deepEqual(order, ['fast']);
  await Promise.all(slow);
  assert.deepEqual(order, ['fast', 'slow']);
});

test('pools — progress updates and log records reach the main thread in order', async (t) => {
  const pools = makePools(t);
  const stages: unknown[] = [];
  const logged: unknown[] = [];
  const log = {
    trace: () => undefined,
    debug: () => undefined,
    info: (obj: object | string, msg?: string) => logged.push([obj, msg]),
    warn: () => undefined,
    error: () => undefined,
  };
  const outcome = await pools.run(task('test.progress', { steps: 3 }), { onProgress: (stage, detail) => stages.push([stage, detail]), log });
  assert.equal(outcome.ok, true);
  assert.deepEqual(stages, [
    ['step', { step: 1, of: 3 }],
    ['step', { step: 2, of: 3 }],
    ['step', { step: 3, of: 3 }],
  ]);
  await pools.run(task('test.echo'), { log });
  assert.deepEqual(logged, [[{ echoed: true }, 'echo']]);
});

test('pools — side messages of concurrent tasks reach their own task, all of them before its outcome', async (t) => {
  // Progress travels on the pool's side channel and the outcome through tinypool: the outcome must wait for
  // every progress line its task sent, and two tasks on two threads must not see each other's lines.
  const pools = makePools(t, { 'test.progress': { maxThreads: 2 } });
  const run = async (steps: number) => {
    const seen: number[] = [];
    const outcome = await pools.run(task('test.progress', { steps }), { onProgress: (_stage, detail) => seen.push((detail as { step: number }).step) });
    return { outcome, seenAtOutcome: [...seen] };
  };
  const results = await Promise.all([run(300), run(200), run(300), run(1)]);
  for (const [index, steps] of [300, 200, 300, 1].entries()) {
    const result = results[index]!;
    assert.equal(result.outcome.ok, true);
    assert.deepEqual(result.seenAtOutcome, Array.from({ length: steps }, (_, i) => i + 1));
  }
});

test('pools — a message whose time runs out while it waits for a thread is never started; stats count it as queued, not running', async (t) => {
  const pools = makePools(t, { 'test.sleep': { maxThreads: 1, cancelGraceMs: 5_000 } });
  // test.sleep's one thread: a long sleep holds it, a sleep with a 200 ms deadline queues behind it.
  const logged: unknown[] = [];
  const log = { trace: () => undefined, debug: () => undefined, info: (obj: object | string) => logged.push(obj), warn: () => undefined, error: () => undefined };
  const holding = pools.run(task('test.sleep', { ms: 1_000 }));
  const queued = pools.run(task('test.sleep', { ms: 10, announce: true }, 200), { log });
  await new Promise((r) => setTimeout(r, 100));
  const stats = pools.stats().find((s) => s.type === 'test.sleep')!;
  assert.deepEqual([stats.running, stats.queued], [1, 1]);
  const outcome = await queued;
  assert.equal(errorCode(outcome), 'DEADLINE_EXCEEDED');
  // Answered when its time ran out, not when the thread came free; it no longer counts as queued.
  const after = pools.stats().find((s) => s.type === 'test.sleep')!;
  assert.deepEqual([after.running, after.queued], [1, 0]);
  assert.equal((await holding).ok, true);
  // Had the queued one started once the thread was free, its handler would have logged "sleeping".
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(logged, []);
});

test('pools — with tasksPerThread above 1, one thread works on several messages at once', async (t) => {
  const pools = makePools(t, { 'test.shared': { maxThreads: 1, tasksPerThread: 4 } });
  const events: string[] = [];
  const runs = ['a', 'b', 'c', 'd'].map(async (name) => {
    const outcome = await pools.run(task('test.shared', { announce: name, ms: 1_500 }), { log: startLog(events) });
    events.push(`done ${name}`);
    return outcome;
  });
  const outcomes = await Promise.all(runs);
  assert.deepEqual(outcomes.map((o) => o.ok), [true, true, true, true]);
  // One thread: all four had started before the first finished. One task per thread would alternate.
  assert.deepEqual(events.slice(0, 4).sort(), ['start a', 'start b', 'start c', 'start d']);
  assert.equal(pools.stats().find((s) => s.type === 'test.shared')?.threads, 1);
});

test('pools — a handler stuck on the CPU takes the messages sharing its thread down with it; the pool serves again', async (t) => {
  const pools = makePools(t, { 'test.shared': { maxThreads: 1, tasksPerThread: 4, timeoutMs: 20_000, cancelGraceMs: 200 } });
  assert.equal((await pools.run(task('test.shared'))).ok, true); // the thread is up
  // The spinning one has a short deadline; the one behind it on the same thread a long one.
  const stuck = pools.run(task('test.shared', { do: 'spin' }, 800));
  const behind = pools.run(task('test.shared', { ms: 0 }));
  assert.equal(errorCode(await stuck), 'DEADLINE_EXCEEDED');
  const crashed = await behind;
  assert.equal(errorCode(crashed), 'WORKER_CRASHED');
  assert.match(crashed.ok ? '' : crashed.error.message, /stopped: message t-\d+ on the same thread ran past its time and ignored the cancel/);
  assert.deepEqual(await pools.run(task('test.shared', { announce: 'after' })), { ok: true, result: { done: 'after' } });
});

test('pools — a handler that ends its thread takes the messages sharing it down; the pool serves again', async (t) => {
  const pools = makePools(t, { 'test.shared': { maxThreads: 1, tasksPerThread: 4, timeoutMs: 20_000 } });
  const events: string[] = [];
  const waiting = pools.run(task('test.shared', { announce: 'waiting', ms: 10_000 }), { log: startLog(events) });
  while (!events.includes('start waiting')) await new Promise((r) => setTimeout(r, 10));
  const exiting = await pools.run(task('test.shared', { do: 'exit' }));
  assert.equal(errorCode(exiting), 'WORKER_CRASHED');
  assert.match(exiting.ok ? '' : exiting.error.message, /exit code 9/);
  // Answered at once, not after its 10 s sleep or its timeout.
  assert.equal(errorCode(await waiting), 'WORKER_CRASHED');
  assert.deepEqual(await pools.run(task('test.shared', { announce: 'after' })), { ok: true, result: { done: 'after' } });
});

test('pools — with tasksPerThread above 1, BUSY comes once every thread holds that many and the queue is full', async (t) => {
  const pools = makePools(t, { 'test.shared': { maxThreads: 1, tasksPerThread: 2, maxQueue: 1 } });
  const accepted = [1, 2, 3].map(() => pools.run(task('test.shared', { ms: 600 })));
  await new Promise((r) => setTimeout(r, 100));
  const refused = await pools.run(task('test.shared', { ms: 0 }));
  assert.equal(errorCode(refused), 'BUSY');
  assert.deepEqual((await Promise.all(accepted)).map((o) => o.ok), [true, true, true]);
});

test('pools — messages still waiting for a thread when the pools stop are answered SHUTTING_DOWN, never started', async (t) => {
  const pools = makePools(t); // destroyed below; destroying again after the test does nothing
  const events: string[] = [];
  const running = pools.run(task('test.sleep', { ms: 5_000, announce: 'running' }), { log: startLog(events) });
  const waiting = pools.run(task('test.sleep', { ms: 0, announce: 'waiting' }), { log: startLog(events) });
  while (!events.includes('start true')) await new Promise((r) => setTimeout(r, 10));
  await pools.destroy();
  assert.equal(errorCode(await waiting), 'SHUTTING_DOWN');
  assert.equal(errorCode(await running), 'WORKER_CRASHED');
  assert.deepEqual(events, ['start true']);
});

test('pools — a message held by startAfter (its serializeBy lock) counts as queued and against maxQueue, and runs once it may', async (t) => {
  const pools = makePools(t, { 'test.sleep': { maxThreads: 1, maxQueue: 2 } });
  let asked = 0;
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const held = pools.run(task('test.sleep', { ms: 0 }), { startAfter: () => (asked++, gate) });
  const alsoHeld = pools.run(task('test.sleep', { ms: 0 }), { startAfter: () => (asked++, gate) });
  const stats = pools.stats().find((s) => s.type === 'test.sleep')!;
  assert.deepEqual([stats.running, stats.queued], [0, 2]);
  // maxQueue 2: two wait already, so a third that would wait too is refused.
  const refused = await pools.run(task('test.sleep', { ms: 0 }), { startAfter: () => (asked++, gate) });
  assert.equal(errorCode(refused), 'BUSY');
  // One with nothing to wait for (its lock is free) takes the idle thread: waiters hold no thread slot.
  assert.deepEqual(await pools.run(task('test.sleep', { ms: 0 }), { startAfter: () => undefined }), { ok: true, result: { slept: 0 } });
  open();
  assert.deepEqual(await held, { ok: true, result: { slept: 0 } });
  assert.deepEqual(await alsoHeld, { ok: true, result: { slept: 0 } });
  assert.equal(pools.stats().find((s) => s.type === 'test.sleep')?.queued, 0);
  assert.equal(asked, 3);
});

test('pools — messages waiting for a lock do not make a message that needs only a free thread BUSY', async (t) => {
  // Found in review of the lock admission: waiters counted against the thread slots too, so with one of
  // two threads idle an unrelated message was refused.
  const pools = makePools(t, { 'test.sleep': { maxThreads: 2, maxQueue: 1 } });
  const running = pools.run(task('test.sleep', { ms: 1_000 }));
  const waiter = pools.run(task('test.sleep', { ms: 0 }), { startAfter: () => new Promise(() => undefined) });
  for (let tries = 0; tries < 200 && pools.stats().find((s) => s.type === 'test.sleep')?.running !== 1; tries++) await new Promise((r) => setTimeout(r, 25));
  assert.deepEqual(await pools.run(task('test.sleep', { ms: 0 })), { ok: true, result: { slept: 0 } });
  // The queue (maxQueue 1) is full with the waiter: another would-be waiter is refused.
  assert.equal(errorCode(await pools.run(task('test.sleep', { ms: 0 }), { startAfter: () => new Promise(() => undefined) })), 'BUSY');
  await running;
  void waiter;
});

test('pools — a message held by startAfter is answered as soon as its time runs out or it is cancelled there', async (t) => {
  const pools = makePools(t, { 'test.sleep': { timeoutMs: 1_000 } });
  const never = () => new Promise<void>(() => undefined);
  const timedOut = await pools.run(task('test.sleep', { ms: 0 }), { startAfter: never });
  assert.equal(errorCode(timedOut), 'TIMEOUT');
  assert.deepEqual(!timedOut.ok && timedOut.error.details, { type: 'test.sleep', timeoutMs: 1_000 });
  const pastDeadline = await pools.run(task('test.sleep', { ms: 0 }, 200), { startAfter: never });
  assert.equal(errorCode(pastDeadline), 'DEADLINE_EXCEEDED');
  const cancellation = new Cancellation();
  const cancelled = pools.run(task('test.sleep', { ms: 0 }), { startAfter: never, cancellation });
  cancellation.cancel(cloudletError('SHUTTING_DOWN', 'the agent is stopping'));
  assert.equal(errorCode(await cancelled), 'SHUTTING_DOWN');
  const droppedOnStop = pools.run(task('test.sleep', { ms: 0 }), { startAfter: never });
  assert.equal(pools.stats().find((s) => s.type === 'test.sleep')?.queued, 1);
  await pools.destroy();
  assert.equal(errorCode(await droppedOnStop), 'SHUTTING_DOWN');
});
