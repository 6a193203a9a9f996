/**
 * A second baseline for benchmark 1: a hand-written amqplib RPC echo that keeps the delivery guarantees a
 * cloudlet agent keeps (docs/PROTOCOL.md, issue #3), and nothing else of the framework:
 * - requests arrive persistent on a durable queue (the client publishes them so, with publisher confirms);
 * - each request id is written to an append-only file before the work and again after it, so a redelivered
 *   id can be answered without running twice, batched as the agent's outcome store batches them: the start
 *   lines of one socket read in one write before any of those requests is worked on, the done lines of one
 *   event-loop turn in one write right before that turn's frames reach the socket;
 * - the reply is publisher-confirmed, and only then is the request acked;
 * - like the agent (and its client, bench/lib/raw-rpc.ts), it writes each event-loop turn's frames to the
 *   socket in one go (core/transports/amqp/coalesce-writes.ts), so the split below is not skewed by that.
 * No validation, routing, worker threads, deadlines or progress: the gap between this and the agent is the
 * framework's own cost, the gap between this and the plain raw echo is the guarantees' cost.
 *
 *   node --import tsx bench/servers/raw-guaranteed-echo-server.ts URL QUEUE PREFETCH OUTCOME_FILE
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import amqplib, { type ConsumeMessage } from 'amqplib';
import { coalesceFrameWrites } from '../../core/transports/amqp/coalesce-writes.ts';

const [url, queue, prefetchText, outcomeFile] = process.argv.slice(2);
if (!url || !queue || !outcomeFile) {
  console.error('usage: raw-guaranteed-echo-server.ts URL QUEUE PREFETCH OUTCOME_FILE');
  process.exit(2);
}

const outcomes = openSync(outcomeFile, 'a');
let pendingLines: string[] = [];
const writePending = () => {
  if (pendingLines.length === 0) return;
  writeSync(outcomes, `${pendingLines.join('\n')}\n`);
  pendingLines = [];
};
const connection = await amqplib.connect(url, { noDelay: true });
if (!coalesceFrameWrites(connection, writePending)) throw new Error('coalesceFrameWrites: amqplib internals moved');
const channel = await connection.createConfirmChannel();
// Durable like an agent's host queue; the bench deletes it afterwards.
await channel.assertQueue(queue, { durable: true });
await channel.prefetch(Number(prefetchText ?? 32));
let burst: ConsumeMessage[] = [];
await channel.consume(queue, (msg) => {
  if (!msg) return;
  pendingLines.push(JSON.stringify({ id: String(msg.properties.messageId), t: 'start', at: Date.now() }));
  burst.push(msg);
  // The deliveries of one socket read arrive in one synchronous burst: their start lines share a write.
  if (burst.length === 1) queueMicrotask(answerBurst);
});

function answerBurst(): void {
  writePending();
  for (const msg of burst.splice(0)) {
    // The "outcome" is the echoed body, stored whole as the agent stores its reply; written before the frames.
    pendingLines.push(JSON.stringify({ id: String(msg.properties.messageId), t: 'done', at: Date.now(), reply: msg.content.toString('utf8') }));
    channel.sendToQueue(msg.properties.replyTo as string, msg.content, { correlationId: msg.properties.correlationId as string, contentType: 'application/json' }, (error) => {
      // Not confirmed: back to the queue, as the agent leaves it unacked for redelivery.
      if (error) channel.nack(msg, false, true);
      else channel.ack(msg);
    });
  }
}
console.log(`raw guaranteed echo server ready on ${queue}`);

const stop = async () => {
  await connection.close().catch(() => undefined);
  closeSync(outcomes);
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
