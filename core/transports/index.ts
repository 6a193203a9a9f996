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

/** Time allowed, beyond the drain and the stop hooks' limits, for a stopping agent's threads and transport to close. */
const STOP_MARGIN_MS = 30_000;

/**
 * How long a start waits for an agent that says it is stopping on the same socket path: that agent drains
 * for up to shutdown.graceMs, cancels what still runs and waits for it up to the longest cancelGraceMs of
 * its pools, then runs its plugins' stop hooks one after another, each for up to shutdown.stopHookMs, then
 * ends its threads. A successor that gave up sooner would fail a restart whose old agent was merely slow to
 * stop.
 */
export function successorWaitMs(shutdown: { graceMs: number; stopHookMs: number }, context: Pick<AgentTransportContext, 'stopHooks' | 'longestCancelGraceMs'>): number {
  return shutdown.graceMs + context.longestCancelGraceMs + context.stopHooks * shutdown.stopHookMs + STOP_MARGIN_MS;
}

export interface AgentTransportContext {
  hostId: string;
  log: Logger;
  identity: { version: string; plugins: string[]; startedAt: number };
  /** How many of the host's plugins have a stop hook (see successorWaitMs). */
  stopHooks: number;
  /** The longest cancelGraceMs of the host's pools (see successorWaitMs). */
  longestCancelGraceMs: number;
  /** The message types whose handlers answer repeats themselves (MessageDefinition.handlesRepeats). */
  handlesRepeats?: ReadonlySet<string>;
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
        stoppingWaitMs: successorWaitMs(config.shutdown, context),
      });
    case 'amqp':
      return new AmqpAgentTransport({
        config: transport,
        hostId: context.hostId,
        maxMessageBytes: config.limits.maxMessageBytes,
        stateDir: config.state.dir ?? defaultStateDir(),
        log: context.log.child({ transport: 'amqp' }),
        identity: context.identity,
        handlesRepeats: context.handlesRepeats ?? new Set(),
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
