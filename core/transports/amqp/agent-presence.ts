/**
 * The agent's presence on the broker: the heartbeats it sends (what it runs, which routes it takes), the
 * others' heartbeats and clients' probes it hears, and the check that its own heartbeats still come back.
 * The transport (agent.ts) owns the channel; this says what goes on it and when to connect again.
 */
import { Buffer } from 'node:buffer';
import type { ConfirmChannel, ConsumeMessage } from 'amqplib';
import type { AmqpTransportConfig } from '../../config/schema.ts';
import { forgetSchema, HostRegistry, heartbeatSchema, probeSchema, type Heartbeat, type InboundRoute } from './host-registry.ts';

export interface AgentPresenceOptions {
  hostId: string;
  identity: { version: string; plugins: Heartbeat['plugins']; startedAt: number };
  config: Pick<AmqpTransportConfig, 'downAfterMs' | 'heartbeatMs'>;
  presenceExchange: string;
  /** The routes announced: none once the agent stopped taking work. */
  routes(): InboundRoute[];
  /** The channel to publish on now (undefined while the connection is down or has no channel). */
  currentChannel(): ConfirmChannel | undefined;
  /** Whether the connection is up (the silence check waits while it is not). */
  isUp(): boolean;
  /** Connect again, saying why. */
  restart(reason: string): void;
}

export class AgentPresence {
  readonly registry: HostRegistry;
  readonly #options: AgentPresenceOptions;
  /** Our own heartbeats sent since one last came back to us, and when that was (see checkSilence). */
  #unansweredOwn = 0;
  #lastHeardOwn = 0;

  constructor(options: AgentPresenceOptions) {
    this.#options = options;
    this.registry = new HostRegistry(options.config.downAfterMs);
  }

  /**
   * On a new connection: announce ourselves at once, on the new channel itself (the connection does not
   * count as up until setup has returned). No probe: the others' heartbeats tell us who is alive within
   * heartbeatMs, and a probe from every host reconnecting after a broker restart would have every host
   * answer every one of them with its whole view.
   */
  announce(channel: ConfirmChannel): void {
    this.#unansweredOwn = 0;
    this.#lastHeardOwn = Date.now();
    this.publishHeartbeat(false, channel);
  }

  /** The heartbeat timer's tick: check that ours still come back, then send one. */
  tick(): void {
    this.#checkSilence();
    this.publishHeartbeat();
  }

  publishHeartbeat(withView = false, channel?: ConfirmChannel): void {
    const heartbeat = this.#heartbeat(withView);
    this.registry.record(heartbeat);
    if (this.#publish(heartbeat, channel ?? (this.#options.isUp() ? this.#options.currentChannel() : undefined))) this.#unansweredOwn++;
  }

  /**
   * The last heartbeat, as the agent closes: it has stopped, so `cloudlet hosts` can say so at once instead
   * of showing it up until downAfterMs. Waits for the broker's confirm (at most `waitMs`): the connection
   * closes right after.
   */
  async farewell(waitMs = 1_000): Promise<void> {
    const channel = this.#options.isUp() ? this.#options.currentChannel() : undefined;
    if (!channel) return;
    const heartbeat: Heartbeat = { ...this.#heartbeat(false), routes: [], stopped: true };
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        new Promise<void>((resolve) => {
          channel.publish(this.#options.presenceExchange, '', Buffer.from(JSON.stringify(heartbeat)), { contentType: 'application/json' }, () => resolve());
        }),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs))),
      ]);
    } catch {
      // the channel just closed: the others time us out instead
    } finally {
      clearTimeout(timer);
    }
  }

  /** A message on our presence queue: a heartbeat (ours, or another host's), a client's probe, or a forget. */
  onMessage(msg: ConsumeMessage): void {
    let value: unknown;
    try {
      value = JSON.parse(msg.content.toString('utf8'));
    } catch {
      return;
    }
    const heartbeat = heartbeatSchema.safeParse(value);
    if (heartbeat.success) {
      if (heartbeat.data.host === this.#options.hostId) {
        this.#unansweredOwn = 0;
        this.#lastHeardOwn = Date.now();
      } else this.registry.record(heartbeat.data);
      return;
    }
    // A probe (from a new client): answer at once, with what we know.
    const probe = probeSchema.safeParse(value);
    if (probe.success && probe.data.from !== this.#options.hostId) this.publishHeartbeat(true);
    // An operator took a host out of service. Our own id cannot be: our next heartbeat says we are here.
    const forget = forgetSchema.safeParse(value);
    if (forget.success && forget.data.host !== this.#options.hostId) this.registry.forget(forget.data.host);
  }

  #heartbeat(withView: boolean): Heartbeat {
    const { hostId, identity } = this.#options;
    return {
      v: 1,
      kind: 'heartbeat',
      host: hostId,
      version: identity.version,
      plugins: identity.plugins,
      routes: this.#options.routes(),
      startedAt: identity.startedAt,
      sentAt: Date.now(),
      ...(withView ? this.#views() : {}),
    };
  }

  #views(): Pick<Heartbeat, 'view' | 'forgotten'> {
    const forgotten = this.registry.forgottenView();
    return { view: this.registry.view(), ...(forgotten.length > 0 && { forgotten }) };
  }

  /** Says whether it went out. */
  #publish(message: unknown, channel: ConfirmChannel | undefined): boolean {
    if (!channel) return false;
    try {
      channel.publish(this.#options.presenceExchange, '', Buffer.from(JSON.stringify(message)), { contentType: 'application/json' });
      return true;
    } catch {
      // the channel just closed; the next setup announces us again
      return false;
    }
  }

  /**
   * Our own heartbeats stopped coming back while the connection is up: our presence queue lost its binding
   * (the exchange deleted and declared again, say), which nothing announces, and we no longer hear who is
   * alive. Connecting again binds a new queue. Three unanswered in a row, and longer than a host may be
   * silent, so that neither an event-loop stall (which delays our sending too) nor a slow heartbeat
   * interval set against a short downAfterMs is taken for it.
   */
  #checkSilence(): void {
    if (!this.#options.isUp() || this.#unansweredOwn < 3) return;
    const { downAfterMs, heartbeatMs } = this.#options.config;
    const silentMs = Date.now() - this.#lastHeardOwn;
    if (silentMs <= Math.max(downAfterMs, 3 * heartbeatMs)) return;
    this.#unansweredOwn = 0;
    this.#lastHeardOwn = Date.now();
    this.#options.restart(`our own heartbeats stopped coming back (not heard for ${silentMs} ms)`);
  }
}
