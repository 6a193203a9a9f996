/**
 * The broker closing the agent's channel (here: a heartbeat to a presence exchange that was deleted, 404)
 * while requests run. Until the agent has connected again, its channel is dead: progress and keep-alives
 * published to it threw out of the transport (a timer's callback, a promise chain) and ended the process.
 * A real agent process against the shared broker, under a prefix of its own.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import test from 'node:test';
import amqplib from 'amqplib';
import { makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { startCloud } from '../support/cloud.ts';
import { until } from '../helpers.ts';

/** Long enough that every request still runs when the channel closes and when the agent is back. */
const SLEEP_MS = 4_000;
const REQUESTS = 24;

test('amqp agent — the broker closes its channel while requests run and send keep-alives: the agent stays up, answers each once, and answers new requests', { timeout: 90_000 }, async (t) => {
  const cloud = await startCloud(t, [{ id: 'h1' }], {
    // A keep-alive every 100 ms from each running request: some are due while the channel is dead.
    // All of them at once (the default pool runs two), so none is still queued at its timeout.
    hostYaml: () => 'limits:\n  keepaliveMs: 100\npools:\n  test.sleep:\n    tasksPerThread: 16\n',
    // Half go through the any-host queue (another consumer, and an "accepted" progress on arrival).
    routingAny: ['test.reserve', 'test.echo', 'test.sleep'],
  });
  const names = amqpNames(cloud.prefix);
  const agent = cloud.agents.get('h1')!;

  const connection = await amqplib.connect(cloud.url);
  t.after(() => connection.close().catch(() => undefined));
  const channel = await connection.createChannel();
  const replies = new Map<string, ReplyEnvelope[]>();
  const { queue: replyTo } = await channel.assertQueue('', { exclusive: true });
  await channel.consume(
    replyTo,
    (msg) => {
      const envelope = msg && (JSON.parse(msg.content.toString('utf8')) as ReplyEnvelope);
      // Progress ("accepted", "alive") comes on the same queue.
      if (envelope?.kind === 'reply' && envelope.id) replies.set(envelope.id, [...(replies.get(envelope.id) ?? []), envelope]);
    },
    { noAck: true },
  );
  const send = (type: string, payload: unknown, route: 'direct' | 'any'): string => {
    const request = makeRequest({ type, payload, ...(route === 'direct' ? { target: 'h1' } : {}) });
    const [exchange, key] = route === 'direct' ? [names.directExchange, 'h1'] : ['', names.anyQueue];
    channel.publish(exchange, key, Buffer.from(JSON.stringify(request)), { messageId: request.id, replyTo, type, persistent: true, contentType: 'application/json' });
    return request.id;
  };

  const running: string[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    running.push(send('test.sleep', { ms: SLEEP_MS }, i % 2 === 0 ? 'direct' : 'any'));
    // Staggered, so that the keep-alives of some are due at any moment, and some have sent none yet.
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  // The agent's next heartbeat goes to an exchange that is gone: the broker closes its channel (404).
  const admin = await connection.createChannel();
  await admin.deleteExchange(names.presenceExchange);
  await until(() => /broker channel error/.test(agent.output()) || agent.child.exitCode !== null, 10_000);
  assert.match(agent.output(), /broker channel error/, 'the broker closed the channel (else this test proves nothing)');

  await until(() => running.every((id) => replies.has(id)) || agent.child.exitCode !== null, 30_000);
  const after = send('test.echo', { value: 'after' }, 'direct');
  await until(() => replies.has(after) || agent.child.exitCode !== null, 15_000);

  // What Node prints as it dies of an uncaught exception or unhandled rejection (the log itself is JSON).
  const crash = agent.output().split('\n').filter((line) => !line.startsWith('{') && /error|uncaught|unhandled/i.test(line));
  assert.deepEqual({ exitCode: agent.child.exitCode, signal: agent.child.signalCode, crash }, { exitCode: null, signal: null, crash: [] }, 'the agent is still up');
  assert.match(agent.output(), /the broker closed the channel: connecting to the broker again/, 'it connected again');
  const answers = running.map((id) => (replies.get(id) ?? []).map((reply) => (reply.ok ? 'ok' : (reply.error?.code ?? 'error'))));
  assert.deepEqual(answers, running.map(() => ['ok']), 'every request that ran across the closed channel is answered once, ok');
  assert.deepEqual(replies.get(after)?.map((reply) => reply.ok), [true], 'a request sent after the channel came back is answered');
});
