import assert from 'node:assert/strict';
import test, { type TestContext } from 'node:test';
import { defaultPoolSettings } from '../../core/config/schema.ts';
import type { PluginLogger, PoolSettings } from '../../core/plugin-api.ts';
import { PoolManager } from '../../core/pools.ts';
import { fileURLToPath } from 'node:url';
import { makeRequest } from '../../core/envelope.ts';
import { handlerMistakesUrl } from '../fixtures/plugins/handler-mistakes/index.ts';
import { startAgent } from '../helpers.ts';

const handlerMistakesPath = fileURLToPath(new URL('../fixtures/plugins/handler-mistakes/index.ts', import.meta.url));

const TYPE = 'mistakes.run';

/** A pool over the handler-mistakes fixture, destroyed when the test ends (pass or fail). */
function makePools(t: TestContext, settings: Partial<PoolSettings> = {}): PoolManager {
  const pools = new PoolManager([
    {
      type: TYPE,
      settings: { ...defaultPoolSettings, maxThreads: 1, timeoutMs: 20_000, ...settings },
      workerData: {
        handlerUrl: handlerMistakesUrl.href,
        pluginName: 'handler-mistakes',
        options: {},
        host: { id: 'boundary-host', agentVersion: '0.0.0', startedAt: Date.now() },
        plugins: [],
        providers: {},
        logLevel: 'debug',
      },
    },
  ]);
  t.after(() => pools.destroy());
  return pools;
}

let seq = 0;
function task(payload: Record<string, unknown>, id = `b-${++seq}`) {
  return { id, type: TYPE, payload, deadline: Date.now() + 30_000 };
}

/** A log that keeps every record as [level, obj, msg]. */
function recordingLog(): { log: PluginLogger; lines: Array<[string, unknown, string | undefined]> } {
  const lines: Array<[string, unknown, string | undefined]> = [];
  const at = (level: string) => (obj: object | string, msg?: string) => void lines.push([level, obj, msg]);
  return { lines, log: { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } };
}

test('worker boundary — a progress update that cannot be copied out of the worker is dropped and logged; the message still succeeds', async (t) => {
  const pools = makePools(t);
  const { log, lines } = recordingLog();
  const progress: unknown[] = [];
  const outcome = await pools.run(task({ do: 'progress-uncloneable' }), { log, onProgress: (stage, detail) => progress.push([stage, detail]) });
  assert.deepEqual(outcome, { ok: true, result: { answered: true } });
  assert.deepEqual(progress, [['after', { ok: true }]]);
  const warnings = lines.filter(([level]) => level === 'warn');
  assert.equal(warnings.length, 1, JSON.stringify(lines));
  assert.deepEqual(warnings[0]?.[1], { stage: 'before' });
  assert.match(warnings[0]?.[2] ?? '', /dropped a progress update that cannot be copied out of the worker thread: .*could not be cloned/);
});

test('worker boundary — a log call never throws: a cycle holding a function, null, a getter that throws', async (t) => {
  const pools = makePools(t);
  const { log, lines } = recordingLog();
  const outcome = await pools.run(task({ do: 'log-odd-values' }), { log });
  assert.deepEqual(outcome, { ok: true, result: { answered: true } });
  assert.deepEqual(
    lines.map(([level, , msg]) => [level, msg]),
    [
      ['info', 'a cycle holding a function'],
      ['info', 'null instead of an object'],
      ['info', 'a getter that throws'],
    ],
  );
  const [cycle, nothing, getter] = lines.map(([, obj]) => obj);
  // The function as its text (whatever the loader made of its source), the cycle named.
  const nested = (cycle as { nested: Record<string, unknown> }).nested;
  assert.match(String(nested.f), /=>\s*1/);
  assert.equal(nested.self, '[Circular]');
  assert.deepEqual(nothing, {});
  assert.deepEqual(getter, { x: '[unreadable: getter refused]' });
});

test('worker boundary — two runs of one message id at once (two callers, or a retry) each get their own progress', async (t) => {
  const pools = makePools(t, { maxThreads: 2 });
  const run = async (steps: number) => {
    const seen: unknown[] = [];
    const outcome = await pools.run(task({ do: 'progress-steps', steps }, 'same-id'), { onProgress: (_stage, detail) => seen.push((detail as { step: number }).step) });
    return { outcome, seen };
  };
  const [two, five] = await Promise.all([run(2), run(5)]);
  assert.deepEqual(two, { outcome: { ok: true, result: { steps: 2 } }, seen: [1, 2] });
  assert.deepEqual(five, { outcome: { ok: true, result: { steps: 5 } }, seen: [1, 2, 3, 4, 5] });
});

test('worker boundary — progress a finished run sends late does not reach a later run of the same id', async (t) => {
  const pools = makePools(t, { maxThreads: 1 });
  assert.deepEqual(await pools.run(task({ do: 'late-progress', ms: 100 }, 'retried-id')), { ok: true, result: { answered: true } });
  // The same thread runs the retry; the late progress (100 ms) is sent before the retry's own (300 ms).
  const progress: unknown[] = [];
  const retry = await pools.run(task({ do: 'progress-after-sleep', ms: 300 }, 'retried-id'), { onProgress: (stage, detail) => progress.push([stage, detail]) });
  assert.deepEqual(retry, { ok: true, result: { slept: 300 } });
  assert.deepEqual(progress, [['own', { after: 300 }]]);
});

test('worker boundary — a payload that cannot be copied to the worker thread is INVALID_PAYLOAD, naming where and what; the thread is not blamed', async (t) => {
  const pools = makePools(t);
  const outcome = await pools.run(task({ do: 'echo', vm: { name: 'web', hooks: [1, { onStart: function onStart() {} }] } }));
  assert.equal(outcome.ok, false);
  const error = !outcome.ok ? outcome.error : assert.fail();
  assert.equal(error.code, 'INVALID_PAYLOAD', error.message);
  assert.equal(error.retryable, false);
  assert.deepEqual((error.details as { issues: Array<{ path: string; message: string }> }).issues.map((issue) => issue.path), ['payload.vm.hooks[1].onStart']);
  assert.match(error.message, /payload\.vm\.hooks\[1\]\.onStart: a function \(onStart\) cannot be sent to the handler's worker thread/);
  assert.deepEqual(await pools.run(task({ do: 'echo' })), { ok: true, result: { echo: { do: 'echo' } } });
  assert.equal(pools.stats()[0]?.threads, 1, 'the thread was kept');
});

test('worker boundary — a payload schema whose transform yields a function is answered INVALID_PAYLOAD through the agent', async (t) => {
  const { client } = await startAgent(t, { plugins: [{ use: handlerMistakesPath }] });
  const reply = await client.request(makeRequest({ type: 'mistakes.fn-payload', payload: { name: 'web' } }));
  assert.equal(reply.error?.code, 'INVALID_PAYLOAD', JSON.stringify(reply.error));
  assert.equal(reply.error?.retryable, false);
  assert.deepEqual(reply.error?.details, {
    issues: [{ path: 'payload.greet', message: "a function (greet) cannot be sent to the handler's worker thread; the plugin's payload schema must produce plain data" }],
  });
});

test('worker boundary — a handler\'s bug is logged with where it threw; the caller gets only the message', async (t) => {
  // Before, HANDLER_ERROR "Cannot read properties of undefined" was all the agent log said, at any level.
  const { client, logs } = await startAgent(t, { plugins: [{ use: handlerMistakesPath }] });
  const reply = await client.request(makeRequest({ type: TYPE, payload: { do: 'read-missing' } }));
  assert.equal(reply.error?.code, 'HANDLER_ERROR');
  assert.match(String(reply.error?.message), /Cannot read properties of undefined \(reading 'deeper'\)/);
  assert.doesNotMatch(JSON.stringify(reply), /handlers\.ts/, 'the stack reached the caller');
  const line = logs().find((l) => l.msgId === reply.id && l.code === 'HANDLER_ERROR');
  assert.match(String(line?.stack), /TypeError: Cannot read properties of undefined[\s\S]*handler-mistakes\/handlers\.ts:\d+/, JSON.stringify(line));
  // A declared or core code is a failure the handler meant: nothing to trace.
  const meant = await client.request(makeRequest({ type: 'mistakes.fn-payload', payload: { name: 'web' } }));
  assert.equal(meant.error?.code, 'INVALID_PAYLOAD');
});

test('worker boundary — whatever a handler throws is answered HANDLER_ERROR, never WORKER_CRASHED', async (t) => {
  const pools = makePools(t);
  const cases: Array<[string, RegExp]> = [
    ['throw-null-prototype', /threw an object with no prototype/],
    ['throw-code-getter', /^its code cannot be read$/],
    ['throw-proxy', /threw an object that cannot be read/],
    ['throw-null', /^null$/],
  ];
  for (const [what, message] of cases) {
    const outcome = await pools.run(task({ do: what }));
    const error = !outcome.ok ? outcome.error : assert.fail(`${what} succeeded`);
    assert.equal(error.code, 'HANDLER_ERROR', `${what}: ${error.message}`);
    assert.match(error.message, message, what);
  }
  assert.equal(pools.stats()[0]?.threads, 1, 'one thread served them all');
});
