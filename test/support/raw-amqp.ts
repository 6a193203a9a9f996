/** Raw amqplib requests to a host's queue, for the fault tests: as a redelivery or a foreign client sends them. */
import { Buffer } from 'node:buffer';
import amqplib from 'amqplib';
import { makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import { heartbeatSchema } from '../../core/transports/amqp/host-registry.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { until } from '../helpers.ts';

/** Publishes a request straight onto a host's queue, as a redelivery would arrive, and waits for its reply. */
export async function rawRequest(url: string, prefix: string, host: string, id: string, type: string, payload: unknown, waitMs = 15_000): Promise<ReplyEnvelope> {
  const connection = await amqplib.connect(url);
  try {
    const channel = await connection.createChannel();
    // A publish to an exchange that is gone closes the channel (404): then the reply just never comes.
    channel.on('error', () => undefined);
    const { queue } = await channel.assertQueue('', { exclusive: true });
    const reply = new Promise<ReplyEnvelope>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${id} within ${waitMs} ms`)), waitMs);
      void channel.consume(
        queue,
        (msg) => {
          const envelope = msg && (JSON.parse(msg.content.toString('utf8')) as ReplyEnvelope);
          if (envelope?.kind === 'reply') {
            clearTimeout(timer);
            resolve(envelope);
          }
        },
        { noAck: true },
      );
    });
    const request = makeRequest({ id, type, target: host, payload });
    channel.publish(amqpNames(prefix).directExchange, host, Buffer.from(JSON.stringify(request)), {
      messageId: id,
      replyTo: queue,
      type,
      persistent: true,
      contentType: 'application/json',
    });
    return await reply;
  } finally {
    await connection.close();
  }
}

/** A fresh exclusive reply queue on `channel`; each reply (not progress) that reaches it goes to `onReply`. */
export async function replyQueue(channel: amqplib.Channel, onReply: (reply: ReplyEnvelope) => void): Promise<string> {
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.consume(
    queue,
    (msg) => {
      const envelope = msg && (JSON.parse(msg.content.toString('utf8')) as ReplyEnvelope);
      if (envelope?.kind === 'reply') onReply(envelope); // progress ("alive") comes on the same queue
    },
    { noAck: true },
  );
  return queue;
}

/** How many times an agent's log says it handled request `id`. */
export function handledCount(output: string, id: string): number {
  return output.split('\n').filter((line) => line.includes(`"msgId":"${id}"`) && line.includes('"msg":"handled"')).length;
}

/**
 * Waits until `host` counts `seen` as a live host that takes any-host requests: its answer to a probe (its
 * view, PROTOCOL.md 11.7) lists `seen` with route "any", heard within the last second. Tests used to sleep
 * 500 ms and hope: a host that had not yet heard the other answered NO_CAPACITY without a hand-on.
 */
export async function untilHeard(url: string, names: ReturnType<typeof amqpNames>, host: string, seen: string): Promise<void> {
  const connection = await amqplib.connect(url);
  try {
    const channel = await connection.createChannel();
    const { queue } = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(queue, names.presenceExchange, '');
    let heard = false;
    await channel.consume(
      queue,
      (msg) => {
        // Read as the agents read it: probes, forgets and other hosts' beats go by.
        const beat = msg && heartbeatSchema.safeParse(JSON.parse(msg.content.toString('utf8'))).data;
        if (beat?.host === host && beat.view?.some((entry) => entry.host === seen && entry.agoMs < 1_000 && entry.routes.includes('any'))) heard = true;
      },
      { noAck: true },
    );
    let probes = 0;
    await until(() => {
      // A probe every half second: each one has every host answer with its whole view.
      if (!heard && probes++ % 10 === 0) channel.publish(names.presenceExchange, '', Buffer.from(JSON.stringify({ v: 1, kind: 'probe', from: 'test-probe' })));
      return heard;
    }, 15_000, `${host} to count ${seen} as a live host taking any-host requests`);
  } finally {
    await connection.close();
  }
}
