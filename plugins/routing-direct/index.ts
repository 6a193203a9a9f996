/**
 * routing-direct: this host takes the requests addressed to it (its own queue on the direct exchange,
 * routing key = host id) and, unless `acceptAny` is off, requests for "any host with capacity" from the
 * competing queue. A handler that has no room throws NO_CAPACITY; the transport then hands the request to
 * the next live host, and the caller gets NO_CAPACITY only when every live host refused.
 */
import { definePlugin, z } from '../../core/plugin-api.ts';

export default definePlugin({
  name: 'routing-direct',
  version: '1.0.0',
  api: '^1.1.0',
  description: 'Requests addressed to this host, and any-host requests from the competing queue.',
  provides: ['routing'],
  options: z
    .object({
      /** Take part in the competing queue for requests sent without a host (e.g. create-vm). */
      acceptAny: z.boolean().default(true),
    })
    .strict(),
  hooks: {
    init(ctx) {
      ctx.transport.addInboundRoute('direct');
      if (ctx.options.acceptAny) ctx.transport.addInboundRoute('any');
    },
  },
});
