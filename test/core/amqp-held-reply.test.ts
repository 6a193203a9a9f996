/**
 * The RabbitMQ agent transport on a connection that writes frame by frame (the path it takes when
 * amqplib's internals differ from what coalesce-writes.ts expects): a reply whose outcome line the disk
 * refuses is held back, its request unacked, and sent by itself once the disk has room; meanwhile other
 * replies (a STATE_UNWRITABLE refusal) are not held back with it. (With coalesced writes the failed write
 * drops the connection instead, which brings the request back.) In process, against the shared broker,
 * with the outcome file on a 64 KiB tmpfs of the test's own.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeReply, makeRequest, type ReplyEnvelope, type RequestEnvelope } from '../../core/envelope.ts';
import { createLogger } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { until } from '../helpers.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';

test('amqp agent, frame-by-frame writes — a reply the full disk held back is sent once the disk has room; the handler ran once; other replies are not held', { timeout: 60_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'cloudlet-held-reply-'));
  const outcomes = join(stateDir, 'outcomes');
  mkdirSync(outcomes);
  let mounted = false;
  let transport: AmqpAgentTransport | undefined;
  let connection: amqplib.ChannelModel | undefined;
  const prefix = `cloudlet-test-held-${randomUUID().slice(0, 8)}`;
  // In this order, each step whatever the one before did: the transport holds the outcome file open, and a
  // busy tmpfs cannot be unmounted.
  t.after(async () => {
    const steps = [
      () => connection?.close(),
      () => transport?.close(),
      () => deletePrefix(SHARED_BROKER, prefix, ['h1']),
      () => mounted && execFileSync('umount', [outcomes]),
      () => rmSync(stateDir, { recursive: true, force: true }),
    ];
    for (const step of steps) await Promise.resolve().then(step).catch((error: unknown) => console.error('cleanup:', error));
  });
  // 16 pages. The outcome file takes one for its start line; the filler, written while the handler runs,
  // takes the other 15, so the done line (a reply larger than a page) finds no room.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', outcomes]);
  mounted = true;
  const filler = join(outcomes, 'filler');

  transport = new AmqpAgentTransport({
    config: amqpTransportSchema.parse({ kind: 'amqp', url: SHARED_BROKER, prefix, heartbeatMs: 500 }),
    hostId: 'h1',
    maxMessageBytes: 1024 * 1024,
    stateDir,
    log: createLogger({ level: 'silent', format: 'json' }),
    identity: { version: 'test', plugins: [], startedAt: Date.now() },
    coalesceWrites: false,
  });
  transport.addInboundRoute('direct'); // as routing-direct does
  const handled: string[] = [];
  await transport.listen((delivery) => {
    const request = JSON.parse(String(Buffer.from(delivery.body as Uint8Array))) as RequestEnvelope;
    handled.push(request.id);
    writeFileSync(filler, Buffer.alloc(15 * 4096)); // the disk fills up while the handler runs
    void delivery.reply(makeReply(request, 'h1', { ok: true, result: 'x'.repeat(8_000) }));
  });

  connection = await amqplib.connect(SHARED_BROKER);
  const channel = await connection.createChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  const replies: { reply: ReplyEnvelope; doneLineWritten: boolean }[] = [];
  await channel.consume(
    queue,
    (msg) => {
      if (!msg) return;
      const reply = JSON.parse(msg.content.toString('utf8')) as ReplyEnvelope;
      // As the reply arrives: is its outcome in the file already? (It must be written before the reply leaves.)
      const doneLineWritten = readFileSync(join(outcomes, 'h1.jsonl'), 'utf8').includes(`{"id":${JSON.stringify(reply.id)},"t":"done"`);
      replies.push({ reply, doneLineWritten });
    },
    { noAck: true },
  );
  const send = (request: RequestEnvelope) =>
    channel.publish(amqpNames(prefix).directExchange, 'h1', Buffer.from(JSON.stringify(request)), {
      messageId: request.id,
      replyTo: queue,
      type: request.type,
      persistent: true,
      contentType: 'application/json',
    });
  const held = makeRequest({ type: 'test.echo', target: 'h1', payload: {} });
  send(held);
  await until(() => handled.length === 1, 10_000);
  assert.deepEqual(handled, [held.id], 'the handler ran');
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  assert.equal(replies.length, 0, 'no reply leaves before its outcome is written');

  // Another request while the first is held: its start cannot be written either, so it is refused, and
  // the refusal (which has no outcome line of its own) is not held back behind the first one's.
  const refused = makeRequest({ type: 'test.echo', target: 'h1', payload: {} });
  send(refused);
  await until(() => replies.length > 0, 5_000);
  assert.deepEqual(
    replies.map(({ reply }) => [reply.id, reply.error?.code]),
    [[refused.id, 'STATE_UNWRITABLE']],
    'the refusal went out while the first reply was still held',
  );
  assert.deepEqual(handled, [held.id], 'the refused request did not run');

  unlinkSync(filler); // room again
  await until(() => replies.length > 1, 15_000);
  assert.equal(replies.length, 2, 'the held reply went out once the disk had room');
  const [, sent] = replies;
  assert.equal(sent?.reply.id, held.id);
  assert.equal((sent?.reply.result as string).length, 8_000);
  assert.equal(sent?.doneLineWritten, true, 'its outcome was in the file when it arrived');
  assert.deepEqual(handled, [held.id], 'the handler did not run again');
  // Both requests were acked: closing the transport would put an unacked one back in the queue.
  await transport.close();
  assert.equal((await channel.checkQueue(amqpNames(prefix).hostQueue('h1'))).messageCount, 0, 'nothing left unacked');
});
