/**
 * The seam between the core and the wire. The agent side receives raw messages (the core decodes and
 * validates them, so every transport gets the same checks) and answers through the delivery it was given.
 * The client side sends envelopes and waits for replies. Local (unix socket) and RabbitMQ implement it.
 */
import type { EventEnvelope, ProgressEnvelope, ReplyEnvelope, RequestEnvelope } from '../envelope.ts';

/** Signs (when the host signs replies) and measures a reply as it will travel; returns it with its JSON. */
export type ReplySealer = (reply: ReplyEnvelope) => { reply: ReplyEnvelope; encoded: string };

/** One inbound message as the agent receives it, before decoding. */
export interface InboundDelivery {
  /** The raw bytes or text; the dispatcher decodes and validates it. */
  readonly body: string | Uint8Array;
  /** False when the sender left no way to answer (the dispatcher then logs and drops a broken message). */
  readonly replyable: boolean;
  /**
   * Sends the final reply; resolves once the transport has handed it on (e.g. publisher confirm).
   * `encoded`: the envelope as JSON, when the caller has it already (the dispatcher always does, having
   * measured it): the transport sends and stores that text rather than serialising the envelope again.
   * `reseal`: a transport that changes the envelope before sending it (the RabbitMQ transport adds who
   * refused a request to NO_CAPACITY) passes the changed one through it: signed again (the signature covers
   * the error) and measured again, with its JSON.
   */
  reply(envelope: ReplyEnvelope, encoded?: string, reseal?: ReplySealer): Promise<void>;
  /** Streams a progress update; best effort, never blocks the handler. */
  progress(envelope: ProgressEnvelope): void;
  /** Where it came from, for the log when it is refused (never secrets). */
  readonly sender?: Record<string, unknown>;
  /** Sent by a plugin of this agent (ctx.dispatch), not received from outside: no signature is required. */
  readonly trusted?: boolean;
}

export type DeliveryListener = (delivery: InboundDelivery) => void;

export interface AgentTransport {
  readonly kind: string;
  /**
   * Starts taking messages; each is passed to `onDelivery`. `sealReply` signs and measures the replies a
   * transport makes by itself, with no dispatcher involved (the RabbitMQ transport's DEAD_LETTERED and
   * STATE_UNWRITABLE), so a client that requires signed replies can read them too.
   */
  listen(onDelivery: DeliveryListener, sealReply?: ReplySealer): Promise<void>;
  /**
   * Claims what this agent will serve on before any plugin starts (the local socket path's lock), so a
   * second agent for the same place is refused before its hooks act on what the first one runs. Released
   * by close(). Transports with nothing to claim leave it out. `signal` ends a wait for another agent that
   * is stopping (LockWaitCalledOff): the agent was told to stop meanwhile.
   */
  reserve?(options?: { signal?: AbortSignal }): Promise<void>;
  /** Stops taking new messages (shutdown); messages already delivered can still be answered. */
  stopAccepting(): Promise<void>;
  publishEvent(event: EventEnvelope): Promise<void>;
  /** Closes everything (the agent's last step of a stop); after in-flight replies were sent. */
  close(): Promise<void>;
  /** Where the agent can be reached, for logs (never contains credentials). */
  describe(): string;
  /** Whether messages can arrive now (socket listening, broker connected); health checks read it. */
  isUp?(): boolean;
  /**
   * Routing plugins call this (in their init hook) to make the host take part in a kind of routing:
   * `direct` (its own queue), `any` (the competing queue) or `broadcast`. Transports without routing
   * (the local socket, where every request is for this host) leave it out.
   */
  addInboundRoute?(route: InboundRoute): void;
}

export type InboundRoute = 'direct' | 'any' | 'broadcast';

export interface RequestOptions {
  onProgress?(progress: ProgressEnvelope): void;
  signal?: AbortSignal;
}

export interface GatherResult {
  replies: ReplyEnvelope[];
  /** Hosts that were expected to answer and did not before the deadline. */
  missing: string[];
  /**
   * Hosts in `missing` from which only replies the client does not trust came (a signature that does not
   * check out), with the last reason. Set only by a checking client (SigningClientTransport).
   */
  untrusted?: { host: string; reason: string }[];
  /**
   * Hosts known to take broadcasts that are down (silent for longer than downAfterMs) and so were not asked:
   * their VMs may still run, but nobody answers for them. Set by the RabbitMQ client.
   */
  down?: { host: string; agoMs: number }[];
}

export interface GatherOptions extends RequestOptions {
  onReply?(reply: ReplyEnvelope): void;
  /**
   * Asked of each reply before it counts. One it refuses is dropped as if it never came: its host is still
   * waited for (a later reply from it may be accepted), and the hosts it names as live are not added. A
   * client that checks signatures passes its check, so a forged first reply cannot stand for a host.
   */
  accept?(reply: ReplyEnvelope): boolean;
}

/** A host as a client's registry knows it (ClientTransport.hosts). */
export interface KnownHost {
  host: string;
  state: 'up' | 'down';
  routes: InboundRoute[];
  tookRoutes: InboundRoute[];
}

export interface ClientTransport {
  readonly kind: string;
  /** Sends a request and resolves with its reply (which may carry an error). Rejects only for transport failures. */
  request(request: RequestEnvelope, options?: RequestOptions): Promise<ReplyEnvelope>;
  /** Sends a request to every live host and gathers the replies. */
  gather(request: RequestEnvelope, options?: GatherOptions): Promise<GatherResult>;
  /**
   * The hosts this client knows of, from their heartbeats (RabbitMQ; absent on the local socket). `tookRoutes`:
   * the routes a host took when it last took work (a host draining before it stops announces none).
   */
  hosts?(waitMs?: number): Promise<KnownHost[]>;
  /** Receives events published by agents until the returned function is called. */
  subscribe(onEvent: (event: EventEnvelope) => void): Promise<() => Promise<void>>;
  /**
   * Lets go of the connection. RabbitMQ: calls still pending or waiting for the broker fail with
   * CANCELLED, and so does every call made afterwards. Local socket: answers still due are waited for, up
   * to a grace period, and a call made once close() has resolved opens a new connection.
   */
  close(): Promise<void>;
}
