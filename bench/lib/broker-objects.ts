/** Removing what a benchmark declared on the broker, so a run leaves nothing behind under its prefixes. */
import amqplib from 'amqplib';
import { BROKER_URL } from './cloud.ts';

/**
 * Deletes queues and exchanges by name, each on a channel of its own: a missing one closes its channel with
 * an error, which is no error here.
 */
export async function deleteBrokerObjects(queues: readonly string[], exchanges: readonly string[] = []): Promise<void> {
  const connection = await amqplib.connect(BROKER_URL);
  try {
    for (const [kind, name] of [...queues.map((q) => ['queue', q] as const), ...exchanges.map((e) => ['exchange', e] as const)]) {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await (kind === 'queue' ? channel.deleteQueue(name) : channel.deleteExchange(name)).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
  } finally {
    await connection.close().catch(() => undefined);
  }
}
