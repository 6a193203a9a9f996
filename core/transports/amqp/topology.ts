/** The exchanges and queues every participant declares (idempotently) before using them. */
import type { Channel } from 'amqplib';
import type { AmqpNames } from './names.ts';

export async function declareTopology(channel: Channel, names: AmqpNames): Promise<void> {
  await channel.assertExchange(names.directExchange, 'direct', { durable: true });
  await channel.assertExchange(names.broadcastExchange, 'fanout', { durable: true });
  await channel.assertExchange(names.presenceExchange, 'fanout', { durable: true });
  await channel.assertExchange(names.eventsExchange, 'topic', { durable: true });
  await channel.assertExchange(names.deadLetter, 'fanout', { durable: true });
  // Bounded: expired requests land here too. Oldest first out, and nothing older than a week.
  await channel.assertQueue(names.deadLetter, {
    durable: true,
    arguments: { 'x-max-length': 10_000, 'x-overflow': 'drop-head', 'x-message-ttl': 7 * 24 * 3600 * 1000 },
  });
  await channel.bindQueue(names.deadLetter, names.deadLetter, '');
}
