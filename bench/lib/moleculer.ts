/**
 * Moleculer 0.14 with its AMQP transporter: what a Node user would pick instead of cloudlet for
 * request/reply over RabbitMQ. A dev dependency used only here (see bench/README.md).
 */
import { ServiceBroker, type BrokerOptions } from 'moleculer';

export interface MoleculerTransportSettings {
  /** Messages the server takes before acking (Moleculer's default is 1). */
  prefetch?: number;
  /** TCP_NODELAY on the broker connection (Moleculer leaves Node's default, Nagle on). */
  noDelay: boolean;
}

export function moleculerBrokerOptions(url: string, namespace: string, nodeID: string, settings: MoleculerTransportSettings): BrokerOptions {
  return {
    namespace,
    nodeID,
    logger: false,
    // The bench measures the transport, not Moleculer's metrics or tracing (off by default too).
    metrics: false,
    tracing: false,
    transporter: {
      type: 'AMQP',
      options: {
        url,
        ...(settings.prefetch === undefined ? {} : { prefetch: settings.prefetch }),
        ...(settings.noDelay ? { socketOptions: { noDelay: true } } : {}),
        // Queues go away with their consumers (the bench also deletes them by name).
        autoDeleteQueues: true,
      },
    },
  };
}

/** Every queue and exchange Moleculer's AMQP transporter declares for these nodes (for cleanup). */
export function moleculerBrokerObjects(namespace: string, nodeIDs: readonly string[], actions: readonly string[]): { queues: string[]; exchanges: string[] } {
  const prefix = `MOL-${namespace}`;
  const perNode = ['REQ', 'RES', 'EVENT', 'DISCOVER', 'INFO', 'DISCONNECT', 'HEARTBEAT', 'PING', 'PONG'];
  const broadcast = ['DISCOVER', 'INFO', 'DISCONNECT', 'HEARTBEAT', 'PING', 'EVENT'];
  return {
    queues: [...nodeIDs.flatMap((node) => perNode.map((cmd) => `${prefix}.${cmd}.${node}`)), ...actions.map((action) => `${prefix}.REQB.${action}`)],
    exchanges: broadcast.map((cmd) => `${prefix}.${cmd}`),
  };
}

export { ServiceBroker };
