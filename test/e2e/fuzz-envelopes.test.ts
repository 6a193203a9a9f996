/**
 * Property-based hardening: thousands of random and mutated envelopes and payloads thrown at a running agent
 * over RabbitMQ. Every one with a reply address is answered (with an error or a result), every one without
 * is dead-lettered, the agent stays up, and its memory stays flat.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import test from 'node:test';
import amqplib from 'amqplib';
import fc from 'fast-check';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { queueDepth, startCloud } from '../support/cloud.ts';

const TYPES = ['test.echo', 'test.sleep', 'test.fail', 'test.progress', 'host-info', 'no-such-type', 'UPPER', ''];

/** A request that is valid, then damaged in one or more ways. */
const envelopeArbitrary = fc
  .record({
    v: fc.oneof(fc.constant(1), fc.constant(1), fc.constant(1), fc.constant(2), fc.constant('1'), fc.constant(null)),
    kind: fc.oneof(fc.constant('request'), fc.constant('request'), fc.constant('reply'), fc.string({ maxLength: 8 })),
    id: fc.oneof(fc.uuid(), fc.uuid(), fc.string({ maxLength: 200 }), fc.constant('')),
    type: fc.oneof(...TYPES.map((t) => fc.constant(t)), fc.string({ maxLength: 80 })),
    target: fc.option(fc.oneof(fc.constant('h1'), fc.constant('h2'), fc.string({ maxLength: 70 })), { nil: undefined }),
    deadline: fc.option(fc.oneof(fc.integer(), fc.constant(Date.now() + 60_000), fc.double()), { nil: undefined }),
    payload: fc.oneof(fc.constant({ value: 1 }), fc.constant({ ms: 1 }), fc.constant({ steps: 2 }), fc.jsonValue({ maxDepth: 4 })),
    extra: fc.option(fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }), { nil: undefined }),
  })
  .map(({ extra, ...envelope }) => ({ ...extra, ...envelope }));

/** How the bytes on the wire are damaged on top of the envelope's fields. */
const bodyArbitrary = fc.tuple(envelopeArbitrary, fc.nat(100), fc.nat(1_000), fc.uint8Array({ maxLength: 16 })).map(([envelope, damage, cut, garbage]) => {
  const text = JSON.stringify(envelope);
  if (damage < 10) return Buffer.from(text.slice(0, cut % (text.length + 1)));
  if (damage < 15) return Buffer.concat([Buffer.from(text.slice(0, cut % (text.length + 1))), Buffer.from(garbage), Buffer.from(text.slice(cut % (text.length + 1)))]);
  if (damage < 18) return Buffer.from(garbage);
  return Buffer.from(text);
});

async function agentRssKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

test('fuzz — thousands of random envelopes: each answered or dead-lettered, the agent stays up, memory stays flat', async (t) => {
  // A long downAfterMs: under the flood on a loaded machine the agent's own heartbeats may come back late, and
  // a reconnect for that (its silence watch) would redeliver what it had not acked yet.
  const cloud = await startCloud(t, [{ id: 'h1' }], { downAfterMs: 30_000 });
  const names = amqpNames(cloud.prefix);
  const connection = await amqplib.connect(cloud.url);
  t.after(() => connection.close().catch(() => undefined));
  const channel = await connection.createChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  const answered = new Map<string, number>();
  await channel.consume(
    queue,
    (msg) => {
      if (!msg) return;
      const reply = JSON.parse(msg.content.toString('utf8')) as { kind?: string };
      if (reply.kind !== 'reply') return; // progress
      const key = String(msg.properties.correlationId);
      answered.set(key, (answered.get(key) ?? 0) + 1);
    },
    { noAck: true },
  );

  const agent = cloud.agents.get('h1')!;
  const send = async (bodies: Buffer[], withReplyTo: (i: number) => boolean, tag: string) => {
    const expected: string[] = [];
    let noReply = 0;
    bodies.forEach((body, index) => {
      const correlationId = `${tag}-${index}`;
      const replyable = withReplyTo(index);
      if (replyable) expected.push(correlationId);
      else noReply++;
      channel.publish(names.directExchange, 'h1', body, replyable ? { replyTo: queue, correlationId, messageId: correlationId } : { messageId: correlationId });
    });
    const deadline = Date.now() + 120_000;
    while (expected.some((id) => !answered.has(id)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    return { expected, noReply };
  };

  // Warm-up round (worker threads start, caches fill), then the measured rounds.
  await send(fc.sample(bodyArbitrary, { numRuns: 300, seed: 1 }), () => true, 'warm');
  const rssBefore = await agentRssKb(agent.child.pid!);
  let deadLettered = 0;
  for (let round = 0; round < 4; round++) {
    const bodies = fc.sample(bodyArbitrary, { numRuns: 500, seed: 100 + round });
    const { expected, noReply } = await send(bodies, (i) => i % 10 !== 0, `r${round}`);
    const unanswered = expected.filter((id) => !answered.has(id));
    assert.deepEqual(unanswered, [], `round ${round}: every message with a reply address is answered`);
    assert.ok(expected.every((id) => answered.get(id) === 1), 'each exactly once');
    deadLettered += noReply;
  }
  const deadline = Date.now() + 30_000;
  while ((await queueDepth(cloud.url, names.deadLetter)) < deadLettered && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  assert.equal(await queueDepth(cloud.url, names.deadLetter), deadLettered, 'messages nobody can be told about are dead-lettered');
  assert.equal(agent.child.exitCode, null, 'the agent is up');
  const rssAfter = await agentRssKb(agent.child.pid!);
  t.diagnostic(`agent RSS ${rssBefore} kB before, ${rssAfter} kB after 2,000 fuzzed messages`);
  // Flat: no growth proportional to the messages (2,000 here). Generous bound for GC timing.
  assert.ok(rssAfter - rssBefore < 64 * 1024, `RSS grew by ${rssAfter - rssBefore} kB`);
});
