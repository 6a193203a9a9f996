/** Builds the configured transport; the only place that knows which transports exist. */
import type { CoreConfig } from '../config/schema.ts';
import { defaultStateDir } from '../config/schema.ts';
import type { Logger } from '../logger.ts';
import { AmqpAgentTransport } from './amqp/agent.ts';
import { AmqpClientTransport } from './amqp/client.ts';
import { LocalAgentTransport, LocalClientTransport } from './local.ts';
import { defaultSocketPath } from './socket-path.ts';
import type { AgentTransport, ClientTransport } from './transport.ts';

export type { AgentTransport, ClientTransport } from './transport.ts';

/** Time allowed, beyond shutdown.graceMs, for a stopping agent's stop hooks and threads before a successor gives up. */
const STOP_HOOKS_MARGIN_MS = 30_000;

export interface AgentTransportContext {
  hostId: string;
  log: Logger;
  identity: { version: string; plugins: string[]; startedAt: number };
}

export function createAgentTransport(config: CoreConfig, context: AgentTransportContext): AgentTransport {
  const transport = config.transport;
  switch (transport.kind) {
    case 'local':
      return new LocalAgentTransport({
        socketPath: transport.socket ?? defaultSocketPath(),
        hostId: context.hostId,
        maxMessageBytes: config.limits.maxMessageBytes,
        log: context.log.child({ transport: 'local' }),
        // A successor started during this path's agent's stop waits out its drain and its stop hooks.
        stoppingWaitMs: config.shutdown.graceMs + STOP_HOOKS_MARGIN_MS,
      });
    case 'amqp':
      return new AmqpAgentTransport({
        config: transport,
        hostId: context.hostId,
        maxMessageBytes: config.limits.maxMessageBytes,
        stateDir: config.state.dir ?? defaultStateDir(),
        log: context.log.child({ transport: 'amqp' }),
        identity: context.identity,
      });
  }
}

export function createClientTransport(config: CoreConfig, log: Logger, options: { inactivityTimeoutMs?: number } = {}): ClientTransport {
  const transport = config.transport;
  switch (transport.kind) {
    case 'local':
      return new LocalClientTransport({ socketPath: transport.socket ?? defaultSocketPath(), maxMessageBytes: config.limits.maxMessageBytes, ...options });
    case 'amqp':
      return new AmqpClientTransport({ config: transport, maxMessageBytes: config.limits.maxMessageBytes, log, ...options });
  }
}
