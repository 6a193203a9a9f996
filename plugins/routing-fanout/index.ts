/**
 * routing-fanout: this host answers broadcast requests (e.g. list-vms, host-info of all hosts). A client
 * gathers the replies and returns as soon as every live host has answered — hosts are known from their
 * heartbeats — or at its deadline, naming the hosts that did not answer. A host without this plugin stays
 * out of broadcasts.
 */
import { definePlugin } from '../../core/plugin-api.ts';

export default definePlugin({
  name: 'routing-fanout',
  version: '1.0.0',
  api: '^1.1.0',
  description: 'Broadcast requests reach this host; replies are gathered by the caller.',
  provides: ['routing'],
  hooks: {
    init(ctx) {
      ctx.transport.addInboundRoute('broadcast');
    },
  },
});
