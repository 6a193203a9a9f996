import { hostIdSchema } from '../../envelope.ts';
import { cloudletError } from '../../errors.ts';
import { silentLogger } from '../../logger.ts';
import { AmqpClientTransport } from '../../transports/amqp/client.ts';
import type { Command } from '../command.ts';
import { clientConfig } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';

export const hostsForgetCommand: Command = {
  words: ['hosts', 'forget'],
  usage: `cloudlet hosts forget HOST [--config FILE] [--json]
  Takes a host that is down out of service (RabbitMQ): its queue is deleted, with any requests waiting in it,
  and every agent and client drops it, so "vm list" stops warning that it is down and a request to it is
  UNKNOWN_HOST. A host that is up is refused (HOST_UP). If its agent starts again, it is known again.`,
  flags: [],
  async run({ positionals, values, output }) {
    const [host, ...extra] = positionals;
    if (host === undefined || extra.length > 0) throw cloudletError('USAGE', `hosts forget takes one host id, found ${positionals.length === 0 ? 'none' : `"${positionals.join(' ')}"`}`);
    if (!hostIdSchema.safeParse(host).success) throw cloudletError('USAGE', `"${host}" is not a host id: lowercase letters, digits and "-", 1–63 characters`);
    const config = await clientConfig(values.config);
    if (config.transport.kind !== 'amqp') {
      throw cloudletError('USAGE', 'hosts forget is for clouds on RabbitMQ (transport.kind: amqp); the local transport has one host, its own');
    }
    const client = new AmqpClientTransport({ config: config.transport, maxMessageBytes: config.limits.maxMessageBytes, log: silentLogger() });
    try {
      const forgotten = await client.forgetHost(host);
      const heard = forgotten.lastSeenMsAgo === null ? 'not known to the hosts that answered' : `last heard ${(forgotten.lastSeenMsAgo / 1000).toFixed(1)} s ago`;
      const queue = forgotten.queueDeleted
        ? `; deleted its queue${forgotten.droppedRequests > 0 ? `, dropping ${forgotten.droppedRequests} request${forgotten.droppedRequests === 1 ? '' : 's'} waiting in it` : ''}`
        : '';
      output.result(`forgot ${host} (${heard})${queue}`, { ok: true, ...forgotten });
      // The registries forgot it; only its queue is left, which a request to it now finds (HOST_DOWN).
      if (forgotten.queueKept) output.note(`warning: its queue stays: ${forgotten.queueKept}`);
      return EXIT.OK;
    } finally {
      await client.close();
    }
  },
};
