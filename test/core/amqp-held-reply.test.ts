/**
 * The RabbitMQ agent transport on a connection that writes frame by frame (the path it takes when
 * amqplib's internals differ from what coalesce-writes.ts expects): a reply whose outcome line the disk
 * refuses is held back, and its request must come back by itself, to be answered from its outcome once the
 * disk has room. (With coalesced writes the failed write drops the connection, which brings it back.)
 * In process, against the shared broker, with the outcome file on a 64 KiB tmpfs of the test's own.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import amqplib from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { makeReply, makeRequest, type ReplyEnvelope, type RequestEnvelope } from '../../core/envelope.ts';
import { createLogger } from '../../core/logger.ts';
import { AmqpAgentTransport } from '../../core/transports/amqp/agent.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { deletePrefix, SHARED_BROKER } from '../support/cloud.ts';

test('amqp agent, frame-by-frame writes — a reply the full disk held back is sent once the disk has room; the handler ran once', { timeout: 60_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'cloudlet-held-reply-'));
  const outcomes = join(stateDir, 'outcomes');
  mkdirSync(outcomes);
  let mounted = false;
  let transport: AmqpAgentTransport | undefined;
  let connection: amqplib.ChannelModel | undefined;
  const prefix = `cloudlet-test-held-${randomUUID().slice(0, 8)}`;
  // One hook, in order: the transport holds the outcome file open, and a busy tmpfs cannot be unmounted.
  t.after(async () => {
    await connection?.close().catch(() => undefined);
    await transport?.close();
    await deletePrefix(SHARED_BROKER, prefix, ['h1']);
    if (mounted) execFileSync('umount', [outcomes]);
    rmSync(stateDir, { recursive: true, force: true });
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
  let handled = 0;
  await transport.listen((delivery) => {
    handled++;
    const request = JSON.parse(String(Buffer.from(delivery.body as Uint8Array))) as RequestEnvelope;
    writeFileSync(filler, Buffer.alloc(15 * 4096)); // the disk fills up while the handler runs
    void delivery.reply(makeReply(request, 'h1', { ok: true, result: 'x'.repeat(8_000) }));
  });

  connection = await amqplib.connect(SHARED_BROKER);
  const channel = await connection.createChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  const replies: ReplyEnvelope[] = [];
  await channel.consume(queue, (msg) => msg && replies.push(JSON.parse(msg.content.toString('utf8')) as ReplyEnvelope), { noAck: true });
  const request = makeRequest({ type: 'test.echo', target: 'h1', payload: {} });
  channel.publish(amqpNames(prefix).directExchange, 'h1', Buffer.from(JSON.stringify(request)), {
    messageId: request.id,
    replyTo: queue,
    type: request.type,
    persistent: true,
    contentType: 'application/json',
  });

  await until(() => handled === 1, 10_000);
  assert.equal(handled, 1, 'the handler ran');
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  assert.equal(replies.length, 0, 'no reply leaves before its outcome is written');

  unlinkSync(filler); // room again
  await until(() => replies.length > 0, 15_000);
  assert.equal(replies.length, 1, 'the held reply went out once the disk had room');
  assert.equal(replies[0]?.id, request.id);
  assert.equal((replies[0]?.result as string).length, 8_000);
  assert.equal(handled, 1, 'answered from the stored outcome: the handler did not run again');
  await until(async () => (await channel.checkQueue(amqpNames(prefix).hostQueue('h1'))).messageCount === 0, 5_000);
  // Nothing is left unacked either: closing the transport would put an unacked request back in the queue.
  await transport.close();
  assert.equal((await channel.checkQueue(amqpNames(prefix).hostQueue('h1'))).messageCount, 0, 'the request was acked');
});

async function until(done: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await done()) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
}
