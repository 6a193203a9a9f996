import assert from 'node:assert/strict';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { writeFile } from 'node:fs/promises';
import { makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import { Buffer } from 'node:buffer';
import { createConnection } from 'node:net';
import { rawExchange, startAgent, tempDir, testkitPath, until } from '../helpers.ts';
import { checkHostConfig } from '../../core/config/host-config.ts';
import { rawConfigFrom } from '../../core/config/load.ts';
import { dirname, join } from 'node:path';
import { Agent } from '../../core/agent.ts';
import { lockFolder } from '../../core/folder-lock.ts';
import { loadHostConfig } from '../../core/config/host-config.ts';
import { createLogger, memoryDestination } from '../../core/logger.ts';

const withTestkit = { plugins: [{ use: testkitPath, options: { greeting: 'hey' } }] };

function parseReply(line: string | undefined): ReplyEnvelope {
  assert.ok(line, 'expected a reply line');
  return JSON.parse(line) as ReplyEnvelope;
}

test('agent — host-info answers through the whole path (socket, dispatcher, pool, worker)', async (t) => {
  const { client } = await startAgent(t, withTestkit);
  const reply = await client.request(makeRequest({ type: 'host-info', payload: {}, deadline: Date.now() + 10_000 }));
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  const info = reply.result as { host: string; plugins: { name: string }[]; messageTypes: string[]; uptimeMs: number };
  assert.equal(info.host, 'test-host');
  assert.deepEqual(
    info.plugins.map((p) => p.name),
    ['core', 'testkit'],
  );
  assert.ok(info.messageTypes.includes('test.echo'));
  assert.ok(info.uptimeMs >= 0);
});

test('agent — malformed messages each get their own coded error reply on one connection', async (t) => {
  const { socketPath, agent } = await startAgent(t, { ...withTestkit, limits: { maxMessageBytes: 4096 } });
  const cases: [string, string, string | null][] = [
    ['not json at all', 'BAD_JSON', null],
    ['[1,2,3]', 'BAD_ENVELOPE', null],
    ['{"v":2,"kind":"request","id":"v2","type":"host-info"}', 'UNSUPPORTED_VERSION', 'v2'],
    ['{"v":1,"kind":"reply","id":"k1","type":"host-info"}', 'BAD_ENVELOPE', 'k1'],
    ['{"v":1,"kind":"request","id":"t1","type":"Not A Type"}', 'BAD_ENVELOPE', 't1'],
    ['{"v":1,"kind":"request","id":"u1","type":"no-such-type"}', 'UNKNOWN_TYPE', 'u1'],
    ['{"v":1,"kind":"request","id":"p1","type":"test.sleep","payload":{"ms":"soon"}}', 'INVALID_PAYLOAD', 'p1'],
    ['{"v":1,"kind":"request","id":"h1","type":"host-info","target":"other-host"}', 'WRONG_HOST', 'h1'],
    ['{"v":1,"kind":"request","id":"d1","type":"host-info","deadline":1000}', 'DEADLINE_EXCEEDED', 'd1'],
    // The line is discarded, but its start names the request: the refusal carries its id (PROTOCOL.md 8).
    [`{"v":1,"kind":"request","id":"big","type":"test.echo","payload":{"value":"${'x'.repeat(5000)}"}}`, 'MESSAGE_TOO_LARGE', 'big'],
  ];
  const lines = await rawExchange(socketPath, cases.map(([line]) => `${line}\n`).join(''), cases.length);
  const replies = lines.map((line) => parseReply(line));
  // Replies to broken messages come back in order because none of them reaches a worker.
  for (const [index, [, code, id]] of cases.entries()) {
    const reply = replies.find((r) => r.error?.code === code && r.id === id);
    assert.ok(reply, `case ${index}: no ${code} reply with id ${id}; got ${JSON.stringify(replies)}`);
    assert.equal(reply.ok, false);
    assert.equal(reply.host, 'test-host');
  }
  const unknown = replies.find((r) => r.error?.code === 'UNKNOWN_TYPE');
  assert.ok((unknown?.error?.details as { known: string[] }).known.includes('test.echo'));
  const invalid = replies.find((r) => r.error?.code === 'INVALID_PAYLOAD');
  assert.equal((invalid?.error?.details as { issues: { path: string }[] }).issues[0]?.path, 'payload.ms');
  // The connection and the agent are still fine.
  const after = await rawExchange(socketPath, `${JSON.stringify(makeRequest({ type: 'test.echo', payload: { value: 1 } }))}\n`, 1);
  assert.equal(parseReply(after[0]).ok, true);
  assert.equal(agent.inFlight, 0);
});

test('agent — an oversize line is discarded and the same connection keeps working', async (t) => {
  const { socketPath } = await startAgent(t, { limits: { maxMessageBytes: 2048 } });
  const huge = 'y'.repeat(100_000);
  const good = JSON.stringify(makeRequest({ type: 'host-info', payload: {} }));
  const lines = await rawExchange(socketPath, `${huge}\n${good}\n`, 2);
  assert.equal(parseReply(lines[0]).error?.code, 'MESSAGE_TOO_LARGE');
  assert.equal(parseReply(lines[1]).ok, true);
});

test('agent — a result too large to send is answered MESSAGE_TOO_LARGE and logged with the message id', async (t) => {
  // Before, every other failure was logged at warn with its id, but not this one: the handler had run and
  // succeeded, and nothing in the agent log said why the caller got an error.
  const { client, logs } = await startAgent(t, { plugins: [{ use: testkitPath }], limits: { maxMessageBytes: 4096 } });
  const reply = await client.request(makeRequest({ type: 'test.blob', payload: { bytes: 10_000 } }));
  assert.equal(reply.error?.code, 'MESSAGE_TOO_LARGE');
  const line = logs().find((l) => l.msgId === reply.id && l.code === 'MESSAGE_TOO_LARGE');
  assert.match(String(line?.msg), /^the reply to "test\.blob" would be \d+ bytes; the limit is 4096 \(limits\.maxMessageBytes\): answered MESSAGE_TOO_LARGE instead$/, JSON.stringify(logs().slice(-3)));
});

test('agent — invalid UTF-8 is answered with BAD_JSON', async (t) => {
  const { socketPath } = await startAgent(t);
  const bytes = Buffer.concat([Buffer.from('{"v":1,"kind":"request","id":"u","type":"host-info","payload":{"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}}\n')]);
  const [line] = await rawExchange(socketPath, bytes, 1);
  const reply = parseReply(line);
  assert.equal(reply.error?.code, 'BAD_JSON');
  assert.match(reply.error?.message ?? '', /UTF-8/);
});

test('agent — shutdown is not held up by idle client connections, and late requests get SHUTTING_DOWN', async (t) => {
  const { agent, client, socketPath } = await startAgent(t, withTestkit);
  await client.request(makeRequest({ type: 'host-info', payload: {} }));
  const idle = createConnection(socketPath);
  await new Promise((resolve) => idle.once('connect', resolve));
  t.after(() => idle.destroy());
  const inFlight = client.request(makeRequest({ type: 'test.sleep', payload: { ms: 300 } }));
  await new Promise((r) => setTimeout(r, 100));
  const stopping = agent.stop('test');
  // A request sent on an open connection after shutdown began is answered, not dropped.
  const late = await client.request(makeRequest({ type: 'host-info', payload: {} }));
  assert.equal(late.error?.code, 'SHUTTING_DOWN');
  assert.equal(late.error?.retryable, true);
  assert.equal((await inFlight).ok, true);
  await stopping; // resolves although `idle` never closed its end
});

test('agent — fuzzed envelopes are all answered and the agent stays up', async (t) => {
  const { socketPath, client } = await startAgent(t, withTestkit);
  let state = 0x2545f491;
  const random = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x100000000;
  };
  const valid = { v: 1, kind: 'request', id: 'fuzz', type: 'test.echo', payload: { value: 1 } };
  const mutations: ((o: Record<string, unknown>) => unknown)[] = [
    (o) => ({ ...o, v: [1, '1', null, 0, 99, {}][Math.floor(random() * 6)] }),
    (o) => ({ ...o, kind: ['req', '', null, 5, 'event'][Math.floor(random() * 5)] }),
    (o) => ({ ...o, type: ['', 'UPPER', 'a'.repeat(200), null, 3, 'x..y'][Math.floor(random() * 6)] }),
    (o) => ({ ...o, id: ['', ' ', 'é', null, 'x'.repeat(300), 12][Math.floor(random() * 6)] }),
    (o) => ({ ...o, deadline: [-1, 'tomorrow', 1.5, null, 1e30][Math.floor(random() * 5)] }),
    (o) => ({ ...o, payload: [null, 'str', [1], { value: { deep: [{}] } }, 42][Math.floor(random() * 5)] }),
    (o) => ({ ...o, target: ['', 'UPPER', 'x'.repeat(80), 'other'][Math.floor(random() * 4)] }),
    (o) => ({ ...o, extra: 'field' }),
  ];
  const lines: string[] = [];
  for (let i = 0; i < 300; i++) {
    let candidate: unknown = { ...valid, id: `fuzz-${i}` };
    const count = 1 + Math.floor(random() * 3);
    for (let m = 0; m < count; m++) candidate = mutations[Math.floor(random() * mutations.length)]!(candidate as Record<string, unknown>);
    let line = JSON.stringify(candidate);
    if (random() < 0.2) {
      // byte-level damage: truncate or splice garbage, keeping one line
      const cut = 1 + Math.floor(random() * (line.length - 1));
      line = random() < 0.5 ? line.slice(0, cut) : `${line.slice(0, cut)}\u0000\u00ff{${line.slice(cut)}`;
    }
    lines.push(line);
  }
  const replies = await rawExchange(socketPath, `${lines.join('\n')}\n`, lines.length, 30_000);
  assert.equal(replies.length, lines.length);
  for (const line of replies) {
    const reply = parseReply(line);
    assert.equal(reply.kind, 'reply');
    assert.equal(typeof reply.ok, 'boolean');
    if (!reply.ok) assert.match(reply.error?.code ?? '', /^[A-Z_]+$/);
  }
  const check = await client.request(makeRequest({ type: 'host-info', payload: {} }));
  assert.equal(check.ok, true);
});

test('agent — shutdown lets in-flight work finish within the grace period and refuses new work', async (t) => {
  const { agent, client } = await startAgent(t, { ...withTestkit, shutdown: { graceMs: 5_000 } });
  const inFlight = client.request(makeRequest({ type: 'test.sleep', payload: { ms: 500 }, deadline: Date.now() + 10_000 }));
  await new Promise((r) => setTimeout(r, 150));
  const stopping = agent.stop('test');
  const reply = await inFlight;
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  assert.deepEqual(reply.result, { slept: 500 });
  await stopping;
});

test('agent — shutdown cancels work still running after the grace period with SHUTTING_DOWN', async (t) => {
  const { agent, client, logs } = await startAgent(t, { ...withTestkit, shutdown: { graceMs: 300 } });
  const inFlight = client.request(makeRequest({ type: 'test.sleep', payload: { ms: 60_000 }, deadline: Date.now() + 120_000 }));
  await new Promise((r) => setTimeout(r, 200));
  await agent.stop('test');
  const reply = await inFlight;
  assert.equal(reply.error?.code, 'SHUTTING_DOWN');
  const stopped = logs().find((line) => line.msg === 'stopped');
  assert.deepEqual({ finished: stopped?.finished, cancelled: stopped?.cancelled }, { finished: 0, cancelled: 1 });
});

test('agent — progress streams to the caller before the reply', async (t) => {
  const { client } = await startAgent(t, withTestkit);
  const stages: string[] = [];
  const reply = await client.request(makeRequest({ type: 'test.progress', payload: { steps: 4 } }), {
    onProgress: (p) => stages.push(`${p.stage}:${(p.detail as { step: number }).step}`),
  });
  assert.equal(reply.ok, true);
  assert.deepEqual(stages, ['step:1', 'step:2', 'step:3', 'step:4']);
});

test('agent — seesInFlight (core API 1.11): a handler is told the ids of the requests of those types accepted and not yet answered', async (t) => {
  // A short grace: the long sleep is cancelled when the agent stops at the end.
  const { agent, client, logs } = await startAgent(t, { ...withTestkit, pools: { 'test.sleep': { maxThreads: 1 } }, shutdown: { graceMs: 100 } });
  const inFlightNow = async (type = 'test.in-flight') => ((await client.request(makeRequest({ type, payload: {} }))).result as { inFlight: Record<string, string[]> }).inFlight;
  assert.deepEqual(await inFlightNow(), { 'test.sleep': [], 'test.in-flight': [] }, 'nothing in flight; not this message itself');
  assert.deepEqual(await inFlightNow('test.in-flight-blind'), {}, 'a type that names none gets an empty object');

  // One sleep runs (it holds the only thread), one waits for it.
  const running = makeRequest({ type: 'test.sleep', payload: { ms: 30_000, announce: true } });
  const waiting = makeRequest({ type: 'test.sleep', payload: { ms: 1 } });
  const replies = [client.request(running), client.request(waiting)];
  await until(() => logs().some((line) => line.started === true), 10_000);
  assert.ok(logs().some((line) => line.started === true), 'the first sleep is running');
  assert.deepEqual(await inFlightNow(), { 'test.sleep': [running.id, waiting.id], 'test.in-flight': [] });
  assert.deepEqual(await inFlightNow('test.in-flight-blind'), {});

  await agent.stop('test finished');
  assert.deepEqual((await Promise.all(replies)).map((reply) => reply.error?.code), ['SHUTTING_DOWN', 'SHUTTING_DOWN'], 'both answered once the agent stopped');
});

test('agent — ctx.message (core API 1.12): the handler learns when it is cancelled, and how long it may run after that', async (t) => {
  const { client } = await startAgent(t, { ...withTestkit, pools: { 'test.message': { timeoutMs: 30_000, cancelGraceMs: 2_500 } } });
  const asked = (deadline: number) => makeRequest({ type: 'test.message', payload: {}, deadline });
  type Seen = { message: { id: string; type: string; deadline: number; cancelGraceMs: number } };
  const sentAt = Date.now();
  // The pool's timeout comes first: the deadline is acceptance + timeoutMs.
  const request = asked(sentAt + 120_000);
  const reply = await client.request(request);
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  const { message } = reply.result as Seen;
  assert.deepEqual([message.id, message.type, message.cancelGraceMs], [request.id, 'test.message', 2_500]);
  assert.ok(message.deadline >= sentAt + 30_000 && message.deadline <= Date.now() + 30_000, `deadline ${message.deadline - sentAt} ms after sending`);
  // The caller's deadline comes first: it is the handler's.
  const callerDeadline = Date.now() + 20_000;
  const early = asked(callerDeadline);
  const earlyReply = await client.request(early);
  assert.equal(earlyReply.ok, true, JSON.stringify(earlyReply.error));
  const first = (earlyReply.result as Seen).message;
  assert.equal(first.cancelGraceMs, 2_500);
  assert.equal(first.deadline, callerDeadline);
});

test('agent — the log line of a failure names the code a handler threw, and a thread stopped because its handler ignored the cancel', async (t) => {
  // Before, both lines said only `code` and the message: the caller saw the thrown code (details) but the
  // operator reading the log did not, and a handler stuck past its cancel looked like one that stopped.
  // A grace long enough for a cooperative handler to see its cancel on a loaded machine (200 ms was not: it
  // was once stopped as if it had ignored it).
  const { client, logs } = await startAgent(t, { ...withTestkit, pools: { 'test.sleep': { timeoutMs: 300, cancelGraceMs: 2_000 } } });
  const undeclared = await client.request(makeRequest({ type: 'test.fail', payload: { declared: false } }));
  assert.equal(undeclared.error?.code, 'HANDLER_ERROR');
  const failed = logs().find((line) => line.msgId === undeclared.id && String(line.msg).startsWith('failed:'));
  assert.deepEqual([failed?.code, failed?.thrownCode, failed?.threadStopped], ['HANDLER_ERROR', 'SOMETHING_ELSE', undefined]);

  const cooperative = makeRequest({ type: 'test.sleep', payload: { ms: 5_000 } });
  const stubborn = makeRequest({ type: 'test.sleep', payload: { ms: 5_000, ignoreAbort: true } });
  assert.deepEqual([(await client.request(cooperative)).error?.code, (await client.request(stubborn)).error?.code], ['TIMEOUT', 'TIMEOUT']);
  const lineOf = (id: string) => logs().find((line) => line.msgId === id && String(line.msg).startsWith('failed:'));
  assert.equal(lineOf(cooperative.id)?.threadStopped, undefined, 'a handler that stopped on its cancel');
  assert.equal(lineOf(stubborn.id)?.threadStopped, true);
  assert.match(String(lineOf(stubborn.id)?.msg), /^failed: "test\.sleep" ran longer than its 300 ms timeout; the handler ignored its cancel for the pool's cancelGraceMs, so its thread was stopped$/);
});

test("agent — a handler's log fields named like the agent's own (msg, msgId, level) go under handlerFields, never beside them", async (t) => {
  // Before, pino wrote both: two "msgId" keys on one JSON line, and readers take the last, the handler's.
  const { client, logText } = await startAgent(t, withTestkit);
  const request = makeRequest({ type: 'test.message', payload: { logClashing: true } });
  assert.equal((await client.request(request)).ok, true);
  const line = logText().split('\n').find((text) => text.includes('"message seen"'));
  assert.ok(line, logText());
  const topLevel = line.replace(/"handlerFields":\{[^}]*\}/, '');
  for (const key of ['msg', 'msgId', 'level']) assert.equal(topLevel.split(`"${key}":`).length - 1, 1, `one "${key}" on ${line}`);
  const parsed = JSON.parse(line) as Record<string, unknown>;
  assert.deepEqual([parsed.msgId, parsed.msg, parsed.level, parsed.detail], [request.id, 'message seen', 30, 1]);
  assert.deepEqual(parsed.handlerFields, { msg: 'own msg', msgId: 'spoofed', level: 99 });
});

test("agent — a hook's log fields named like the agent's own go under handlerFields too; an Error logged whole keeps its message and stack", async (t) => {
  const hookLogs = fileURLToPath(new URL('../fixtures/plugins/hook-logs/index.ts', import.meta.url));
  const { logs, logText } = await startAgent(t, { plugins: [{ use: hookLogs }] });
  const line = logText().split('\n').find((text) => text.includes('"hook fields"'));
  assert.ok(line, logText());
  const topLevel = line.replace(/"handlerFields":\{[^}]*\}/, '');
  for (const key of ['host', 'msg', 'plugin']) assert.equal(topLevel.split(`"${key}":`).length - 1, 1, `one "${key}" on ${line}`);
  const parsed = JSON.parse(line) as Record<string, unknown>;
  assert.deepEqual([parsed.host, parsed.plugin, parsed.detail, parsed.handlerFields], ['test-host', 'hook-logs', 1, { host: 'spoofed', msg: 'own msg', plugin: 'other' }]);
  const errorLine = logs().find((entry) => entry.msg === 'hook error') as { err?: { message?: string; stack?: string; code?: string } } | undefined;
  assert.deepEqual([errorLine?.err?.message, errorLine?.err?.code], ['hook error on purpose', 'HOOK_E']);
  assert.match(errorLine?.err?.stack ?? '', /hook-logs\/index\.ts/);
});

test('agent — ctx.holdFolder: one lock per folder for the agent, shared by its plugins, released once the agent has stopped', async (t) => {
  const folder = await tempDir(t);
  const holder = fileURLToPath(new URL('../fixtures/plugins/folder-holder/index.ts', import.meta.url));
  // qemu-backend holds its stateDir too: the same folder, held by another plugin of the same agent, is no refusal.
  const images = await tempDir(t);
  const { agent, logs } = await startAgent(t, { plugins: [{ use: holder, options: { folder } }, { use: 'qemu-backend', options: { stateDir: folder, imagesDir: images } }] });
  const other = { host: 'other', plugin: 'p', state: () => 'starting' as const, stoppingWaitMs: 0 };
  await assert.rejects(lockFolder(folder, other), (error: { code?: string; message: string }) => {
    assert.equal(error.code, 'FOLDER_IN_USE');
    assert.match(error.message, /in use by the agent of host "test-host" \(process \d+, plugin "folder-holder", running\)/);
    return true;
  });
  await agent.stop('test');
  assert.match(String((logs().find((entry) => entry.msg === 'hold refused in stop') as { refused?: string } | undefined)?.refused), /was called while the agent stops; call it from an init or start hook/);
  const after = await lockFolder(folder, other);
  assert.equal(after.held, true, 'released by the stop');
  await after.release();
});

test('agent — many concurrent requests on one connection are matched to their replies by id', async (t) => {
  const { client } = await startAgent(t, withTestkit);
  const replies = await Promise.all(
    Array.from({ length: 50 }, (_, i) => client.request(makeRequest({ type: 'test.echo', payload: { value: i } }))),
  );
  assert.deepEqual(
    replies.map((r) => (r.result as { value: number }).value),
    Array.from({ length: 50 }, (_, i) => i),
  );
});

test('agent — events published by a plugin reach subscribed clients', async (t) => {
  const { agent, client } = await startAgent(t);
  const received: unknown[] = [];
  await client.subscribe((event) => received.push([event.type, event.payload]));
  // Let the subscribe frame arrive before publishing.
  await client.request(makeRequest({ type: 'host-info', payload: {} }));
  await agent.transport.publishEvent({ v: 1, kind: 'event', id: 'e1', type: 'test.happened', host: 'test-host', time: Date.now(), payload: { n: 1 } });
  const deadline = Date.now() + 2_000;
  while (received.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(received, [['test.happened', { n: 1 }]]);
});

test('agent — a plugin dispatches messages to its own host through the same validation and pools (also where signatures are required)', async (t) => {
  const relay = new URL('../fixtures/plugins/relay/index.ts', import.meta.url).pathname;
  const { client, agent } = await startAgent(t, { plugins: [{ use: testkitPath }, { use: relay }], security: { requireSignatures: true } });
  const events: unknown[] = [];
  await client.subscribe((event) => events.push(event.payload));
  const deadline = Date.now() + 10_000;
  while (events.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const done = events[0] as { echoed: { ok: boolean; host: string; result: { value: string } }; invalid: { error: { code: string } }; unknown: { error: { code: string } } };
  assert.ok(done, 'the relay reported back');
  assert.equal(done.echoed.ok, true);
  assert.equal(done.echoed.result.value, 'via relay');
  assert.equal(done.echoed.host, agent.host.id);
  assert.equal(done.invalid.error.code, 'INVALID_PAYLOAD');
  assert.equal(done.unknown.error.code, 'UNKNOWN_TYPE');
});

test("agent — a hook sees its dependencies' validated options, frozen, and no other plugin's (core API 1.6)", async (t) => {
  const { SEEN } = await import('../fixtures/plugins/dependency-reader/index.ts');
  const reader = new URL('../fixtures/plugins/dependency-reader/index.ts', import.meta.url).pathname;
  await startAgent(t, {
    plugins: [
      { use: testkitPath, options: { greeting: 'hello' } },
      { use: 'routing-fanout' },
      { use: reader },
    ],
  });
  const seen = (globalThis as Record<symbol, unknown>)[SEEN] as Record<string, Record<string, unknown>>;
  assert.deepEqual(Object.keys(seen), ['testkit']);
  assert.equal(seen.testkit?.greeting, 'hello');
  assert.ok(Object.isFrozen(seen) && Object.isFrozen(seen.testkit));
  assert.throws(() => {
    (seen.testkit as Record<string, unknown>).greeting = 'changed';
  }, TypeError);
});

test('agent — checkOptions (core API 1.8) reports cross-plugin problems at load, at the plugin\'s options; a throw is a problem too', async () => {
  const reader = new URL('../fixtures/plugins/dependency-reader/index.ts', import.meta.url).pathname;
  const check = (plugins: unknown[]) => checkHostConfig(rawConfigFrom({ host: { id: 'h1' }, plugins }, '/etc/cloudlet/cloudlet.yaml'));
  const testkit = { use: testkitPath, options: { greeting: 'hello' } };
  assert.ok((await check([testkit, { use: reader, options: { sameGreeting: 'hello' } }])).ok);
  const differs = await check([testkit, { use: reader, options: { sameGreeting: 'bye' } }]);
  assert.deepEqual(!differs.ok && differs.problems.map((p) => [p.code, p.path, p.message, p.allowed]), [
    ['PLUGIN_OPTIONS_INVALID', 'plugins[1].options.sameGreeting', 'sameGreeting is "bye" but the testkit greets "hello"', '"hello"'],
  ]);
  const throws = await check([testkit, { use: reader, options: { checkThrows: true } }]);
  assert.deepEqual(!throws.ok && throws.problems.map((p) => [p.code, p.path, p.message]), [
    ['PLUGIN_OPTIONS_INVALID', 'plugins[1].options', 'plugin "dependency-reader" could not check its options: asked to throw'],
  ]);
  // Without its dependency the check is not run: the missing dependency is the one problem.
  const alone = await check([{ use: reader, options: { sameGreeting: 'bye' } }]);
  assert.deepEqual(!alone.ok && alone.problems.map((p) => p.code), ['PLUGIN_DEPENDENCY_MISSING']);
});

test('agent — a plugin hook that throws anything (an Error, a string, null, undefined) fails the start with PLUGIN_HOOK_FAILED naming the plugin', async (t) => {
  const hookThrows = fileURLToPath(new URL('../fixtures/plugins/hook-throws/index.ts', import.meta.url));
  const expected: Record<string, RegExp> = {
    error: /plugin "hook-throws" failed in its init hook: hook-throws failed on purpose$/,
    string: /plugin "hook-throws" failed in its init hook: hook-throws failed with a bare string$/,
    // Before: a raw TypeError (reading "message" of null) escaped, naming no plugin.
    null: /plugin "hook-throws" failed in its init hook: null$/,
    undefined: /plugin "hook-throws" failed in its init hook: undefined$/,
  };
  for (const [throws, message] of Object.entries(expected)) {
    await t.test(throws, async (t) => {
      await assert.rejects(startAgent(t, { plugins: [{ use: hookThrows, options: { throws } }] }), (error: { code?: string; message: string; details?: unknown }) => {
        assert.equal(error.code, 'PLUGIN_HOOK_FAILED', error.message);
        assert.match(error.message, message);
        assert.deepEqual(error.details, { plugin: 'hook-throws', hook: 'init' });
        return true;
      });
    });
  }
});

test('agent — a restart waits for the old agent\'s slow stop hook: drain, the longest cancel grace, each stop hook\'s limit, then a margin', { timeout: 60_000 }, async (t) => {
  // Before, the successor waited shutdown.graceMs + 30 s whatever the stop hooks: two hooks near their
  // 15 s limit made a supervised restart fail with AGENT_ALREADY_RUNNING. And before that counted the pools'
  // cancelGraceMs (up to 600 s), which the drain waits for after cancelling, a long one did the same.
  const stopHangs = fileURLToPath(new URL('../fixtures/plugins/stop-hangs/index.ts', import.meta.url));
  const config = { plugins: [{ use: testkitPath }, { use: stopHangs }], shutdown: { graceMs: 0, stopHookMs: 1_500 }, pools: { 'test.sleep': { cancelGraceMs: 20_000 } } };
  const old = await startAgent(t, config);
  const stopping = old.agent.stop('restart');
  const memory = memoryDestination();
  const dir = dirname(old.socketPath);
  const successor = new Agent(
    await loadHostConfig(rawConfigFrom({ host: { id: 'test-host' }, transport: { kind: 'local', socket: old.socketPath }, ...config }, join(dir, 'cloudlet.yaml'))),
    { logger: createLogger({ level: 'debug', format: 'json', destination: memory.stream }) },
  );
  t.after(() => successor.stop('test finished'));
  await successor.start();
  await stopping;
  // The longest cancel grace is test.sleep's, and one plugin (stop-hangs) has a stop hook: 0 + 20 s + 1 × 1.5 s + 30 s.
  const waited = memory.lines().find((l) => String(l.msg).startsWith('another agent is stopping'));
  assert.equal(waited?.msg, `another agent is stopping on ${old.socketPath}; waiting up to 51.5 s for it to finish`);
});

test('agent — a start hook that runs long is logged, naming its plugin, until it finishes', { timeout: 30_000 }, async (t) => {
  const startHangs = fileURLToPath(new URL('../fixtures/plugins/start-hangs/index.ts', import.meta.url));
  const dir = await tempDir(t);
  const memory = memoryDestination();
  const agent = new Agent(
    await loadHostConfig(
      rawConfigFrom(
        { host: { id: 'test-host' }, transport: { kind: 'local', socket: join(dir, 'agent.sock') }, plugins: [{ use: startHangs, options: { marker: join(dir, 'marker'), releaseFile: join(dir, 'release') } }] },
        join(dir, 'cloudlet.yaml'),
      ),
    ),
    { logger: createLogger({ level: 'debug', format: 'json', destination: memory.stream }), slowHookLogMs: 200 },
  );
  t.after(() => agent.stop('test finished'));
  const started = agent.start();
  const slowLines = () => memory.lines().filter((l) => String(l.msg).includes('start hook has run for'));
  await until(async () => slowLines().length >= 2, 10_000);
  const line = slowLines()[0];
  assert.match(String(line?.msg), /^plugin "start-hangs" start hook has run for \d+ s; the agent takes no messages until it finishes$/);
  assert.deepEqual([line?.plugin, line?.hook], ['start-hangs', 'start']);
  assert.equal(agent.runningHook?.plugin, 'start-hangs');

  // Once the hook finishes, so does its logging: three log periods later, no new line.
  await writeFile(join(dir, 'release'), '');
  await started;
  assert.equal(agent.runningHook, undefined);
  const linesWhenDone = slowLines().length;
  await new Promise((resolve) => setTimeout(resolve, 600));
  assert.equal(slowLines().length, linesWhenDone, 'the slow-hook log stopped with the hook');
});

test('agent — ctx.dispatch from an init hook says it is too early, not that the agent is shutting down', async (t) => {
  // Before: SHUTTING_DOWN "the agent is not running", and not retryable, though that code is.
  const plugin = fileURLToPath(new URL('../fixtures/plugins/dispatch-in-init/index.ts', import.meta.url));
  const { logs } = await startAgent(t, { plugins: [{ use: plugin }] });
  const line = logs().find((l) => l.msg === 'dispatch from init answered');
  const reply = line?.reply as { ok: boolean; error?: { code: string; message: string; retryable?: boolean } } | undefined;
  assert.equal(reply?.ok, false);
  assert.equal(reply?.error?.code, 'INTERNAL');
  assert.equal(reply?.error?.retryable, false);
  assert.match(String(reply?.error?.message), /^ctx\.dispatch\("host-info"\) was called during the init hooks, before the message pools exist; call it from a start hook or later$/);
});

test('agent — a stop hook that never finishes is given up on after shutdown.stopHookMs, and the agent stops', { timeout: 30_000 }, async (t) => {
  // Before, shutdown waited for it for ever: SIGTERM never ended the agent (under systemd, SIGKILL after
  // TimeoutStopSec did, and with it went every stop hook after this one).
  const stopHangs = fileURLToPath(new URL('../fixtures/plugins/stop-hangs/index.ts', import.meta.url));
  const { agent, logs } = await startAgent(t, { plugins: [{ use: testkitPath }, { use: stopHangs }], shutdown: { graceMs: 0, stopHookMs: 300 } });
  const started = Date.now();
  await agent.stop('test');
  assert.ok(Date.now() - started < 10_000, `stop took ${Date.now() - started} ms`);
  const line = logs().find((l) => String(l.msg).includes('did not finish'));
  assert.ok(line, JSON.stringify(logs().slice(-5)));
  assert.match(String(line?.msg), /^plugin "stop-hangs" stop hook did not finish within 300 ms \(shutdown\.stopHookMs\); shutdown goes on without it$/);
});
