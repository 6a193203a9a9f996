/**
 * Every exchange and queue name cloudlet uses on a broker, derived from the configured prefix. Nothing else
 * builds names, so two clouds with different prefixes can never see each other's messages.
 */
export interface AmqpNames {
  /** Direct exchange: host-specific requests, routing key = host id. */
  directExchange: string;
  /** A host's own durable queue, bound to the direct exchange with its id. */
  hostQueue(hostId: string): string;
  /** Durable competing queue for requests any host with capacity may take. */
  anyQueue: string;
  /** Fanout exchange: broadcast requests reach every participating host. */
  broadcastExchange: string;
  /** A host's exclusive queue on the broadcast exchange (broadcasts missed while offline do not matter). */
  broadcastQueue(hostId: string): string;
  /** Fanout exchange for heartbeats and presence probes. */
  presenceExchange: string;
  /** Topic exchange for events, routing key = event type. */
  eventsExchange: string;
  /** Where requests that keep failing end up (exchange and durable queue of the same name). */
  deadLetter: string;
}

export function amqpNames(prefix: string): AmqpNames {
  return {
    directExchange: `${prefix}.direct`,
    hostQueue: (hostId) => `${prefix}.host.${hostId}`,
    anyQueue: `${prefix}.any`,
    broadcastExchange: `${prefix}.broadcast`,
    broadcastQueue: (hostId) => `${prefix}.broadcast.${hostId}`,
    presenceExchange: `${prefix}.presence`,
    eventsExchange: `${prefix}.events`,
    deadLetter: `${prefix}.dead`,
  };
}

/** AMQP header names cloudlet sets; documented in docs/PROTOCOL.md. */
export const HEADERS = {
  /** Hosts that already refused an any-host request for lack of capacity (JSON array). */
  refusedBy: 'x-cloudlet-refused-by',
  /** On broadcast replies: the hosts the replying host sees alive and taking broadcasts (JSON array). */
  liveHosts: 'x-cloudlet-live-hosts',
  /** How the request was routed: direct | any | broadcast. */
  route: 'x-cloudlet-route',
} as const;
