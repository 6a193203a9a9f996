/** Builds the configured transport; the only place that knows which transports exist. */
import type { CoreConfig } from '../config/schema.ts';
import { defaultSocketPath, LocalAgentTransport, LocalClientTransport } from './local.ts';
import type { AgentTransport, ClientTransport } from './transport.ts';

export type { AgentTransport, ClientTransport } from './transport.ts';

export function createAgentTransport(config: CoreConfig, hostId: string): AgentTransport {
  const transport = config.transport;
  switch (transport.kind) {
    case 'local':
      return new LocalAgentTransport({
        socketPath: transport.socket ?? defaultSocketPath(),
        hostId,
        maxMessageBytes: config.limits.maxMessageBytes,
      });
  }
}

export function createClientTransport(config: CoreConfig): ClientTransport {
  const transport = config.transport;
  switch (transport.kind) {
    case 'local':
      return new LocalClientTransport({ socketPath: transport.socket ?? defaultSocketPath(), maxMessageBytes: config.limits.maxMessageBytes });
  }
}
