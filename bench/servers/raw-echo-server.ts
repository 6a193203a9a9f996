/**
 * The baseline server of the RPC benchmark: the least a hand-written amqplib RPC server does. It consumes
 * one queue (manual ack, prefetch as given), answers each message with its own body to the caller's
 * reply-to (direct reply-to on the caller's side), then acks. Runs as its own process, like an agent.
 * Given a fanout exchange too, it also binds its queue to it: several such servers are the floor of a
 * broadcast-and-gather (benchmark 3), each answering every message published to the exchange.
 *
 *   node --import tsx bench/servers/raw-echo-server.ts URL QUEUE [PREFETCH [FANOUT_EXCHANGE]]
 */
import amqplib from 'amqplib';

const [url, queue, prefetchText, fanoutExchange] = process.argv.slice(2);
if (!url || !queue) {
  console.error('usage: raw-echo-server.ts URL QUEUE [PREFETCH [FANOUT_EXCHANGE]]');
  process.exit(2);
}

// TCP_NODELAY, as cloudlet's connection sets it: without it each reply waits for Nagle + delayed ACK.
const connection = await amqplib.connect(url, { noDelay: true });
const channel = await connection.createChannel();
// Not durable and deleted with its consumer: the benchmark leaves nothing behind on the broker.
await channel.assertQueue(queue, { durable: false, autoDelete: true });
if (fanoutExchange) {
  await channel.assertExchange(fanoutExchange, 'fanout', { durable: false, autoDelete: true });
  await channel.bindQueue(queue, fanoutExchange, '');
}
await channel.prefetch(Number(prefetchText ?? 32));
await channel.consume(queue, (msg) => {
  if (!msg) return;
  channel.sendToQueue(msg.properties.replyTo as string, msg.content, { correlationId: msg.properties.correlationId as string, contentType: 'application/json' });
  channel.ack(msg);
});
console.log(`raw echo server ready on ${queue}`);

const stop = async () => {
  await connection.close().catch(() => undefined);
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
