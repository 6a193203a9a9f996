/**
 * The client side of the RabbitMQ transport: direct requests to one host, any-host requests to the
 * competing queue, broadcasts gathered from every live host. Replies come back on direct reply-to.
 *
 * Waiting is driven by signs of life, not a fixed window: every progress or keep-alive from the host
 * restarts the inactivity timer (so a two-minute create does not time out), and a host whose heartbeat
 * stops is noticed within `downAfterMs` (so a dead host fails the call in seconds).
 * After a reconnect, unanswered requests are published again with the same id; hosts answer a repeated
 * id from their stored outcome, and the client keeps only the first reply — each request is answered once.
 */
import { Buffer } from 'node:buffer';
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import { CloudletError, cloudletError } from '../../errors.ts';
import { decodeEnvelope, encodeEnvelope, makeReply, type EventEnvelope, type ProgressEnvelope, type ReplyEnvelope, type RequestEnvelope } from '../../envelope.ts';
import type { AmqpTransportConfig } from '../../config/schema.ts';
import type { Logger } from '../../logger.ts';
import type { ClientTransport, GatherOptions, GatherResult, RequestOptions } from '../transport.ts';
import { BindingKeeper } from './bindings.ts';
import { cancelledError, unlessAborted } from './cancellation.ts';
import { LearnedBrokerLimit } from './broker-limits.ts';
import { BrokerConnection } from './connection.ts';
import { HEADERS, amqpNames, type AmqpNames } from './names.ts';
import { forgetHost, type ForgetResult } from './forget-host.ts';
import { forgetSchema, HostRegistry, heartbeatSchema, type HostEntry } from './host-registry.ts';
import { declareTopology } from './topology.ts';
import { describeUnreadableReply } from './unreadable-reply.ts';
import { InFlightIds } from '../in-flight-ids.ts';

const REPLY_TO = 'amq.rabbitmq.reply-to';
const LIVENESS_CHECK_MS = 250;
/** What arrives on direct reply-to: the final reply, or progress before it. */
const REPLY_KINDS = ['reply', 'progress'] as const;

export interface AmqpClientOptions {
  config: AmqpTransportConfig;
  maxMessageBytes: number;
  log: Logger;
  /** Without a sign of life from the host for this long, a request fails with CLIENT_TIMEOUT. */
  inactivityTimeoutMs?: number;
}

type Route = 'direct' | 'any' | 'broadcast';

interface Pending {
  request: RequestEnvelope;
  /** The request as sent, encoded once (it is published again after a reconnect). */
  body: Buffer;
  route: Route;
  /** Which host is working on it: the target, or whoever sent "accepted" for an any-host request. */
  host: string | undefined;
  /** An any-host request whose accepting host has no queue of its own (the broker returned it from there). */
  acceptedHostUnreachable?: boolean;
  /** Epoch ms: when the client gives up on a request without a deadline (no sign of life until then). */
  givesUpAt?: number;
  onReply(reply: ReplyEnvelope, liveHosts: string[] | undefined): void;
  onProgress(progress: ProgressEnvelope): void;
  /** A reply came that cannot be read (too large, or not a valid reply); `host` sent it, when known. */
  onUnreadableReply(error: CloudletError, host: string | undefined, liveHosts: string[] | undefined): void;
  fail(error: CloudletError): void;
}

/** Channels that have closed: an error for a publish on one of them is not a refusal (see #publish). */
const closedChannels = new WeakSet<object>();

export class AmqpClientTransport implements ClientTransport {
  readonly kind = 'amqp';
  readonly names: AmqpNames;
  readonly registry: HostRegistry;
  readonly #options: AmqpClientOptions;
  readonly #pending = new Map<string, Pending>();
  readonly #eventListeners = new Set<(event: EventEnvelope) => void>();
  /** The one events consumer for all listeners, on the channel it was made on (made again after a reconnect). */
  #events: Promise<{ channel: ConfirmChannel; consumerTag: string; queue: string }> | undefined;
  #eventsChannel: ConfirmChannel | undefined;
  #connection: BrokerConnection | undefined;
  readonly #bindings: BindingKeeper;
  /** The broker's max_message_size, once it refused a request over it (broker-limits.ts). */
  readonly #brokerLimit: LearnedBrokerLimit;
  #opening: Promise<void> | undefined;
  /** Replies are matched by id: one call per id at a time (in-flight-ids.ts). */
  readonly #inFlight = new InFlightIds();
  /** Set by close(): every call from then on fails with CANCELLED, and nothing connects again. */
  #closed = false;
  #channel: ConfirmChannel | undefined;
  #model: ChannelModel | undefined;
  #presenceHeard: Promise<void> | undefined;
  /** Some host has answered our probe: requests no longer wait for the registry (not even a timer's worth). */
  #presenceKnown = false;

  constructor(options: AmqpClientOptions) {
    this.#options = options;
    this.names = amqpNames(options.config.prefix);
    this.registry = new HostRegistry(options.config.downAfterMs);
    this.#bindings = new BindingKeeper(options.config.bindingRefreshMs);
    this.#brokerLimit = new LearnedBrokerLimit(options.log, options.maxMessageBytes);
  }

  #open(): Promise<void> {
    this.#opening ??= (async () => {
      this.#connection = new BrokerConnection({
        url: this.#options.config.url,
        log: this.#options.log,
        setup: (model) => this.#setup(model),
        initialMaxRetries: 1,
        maxReconnectDelayMs: Math.min(Math.max(this.#options.config.heartbeatMs, 100), 5_000),
      });
      this.#connection.on('down', () => {
        this.#channel = undefined;
        this.registry.noteOutage();
      });
      await this.#connection.open();
    })().catch((error: unknown) => {
      this.#opening = undefined;
      throw error;
    });
    return this.#opening;
  }

  async #setup(model: ChannelModel): Promise<void> {
    this.#model = model;
    this.registry.forgiveSilence();
    this.#brokerLimit.connected();
    const channel = await model.createConfirmChannel();
    // A channel the broker closed while the connection stays up (it refused an operation: an exchange
    // deleted, say) takes the replies and the presence feed with it: start again, as after a reconnect.
    channel.on('error', (error: Error) => {
      // A refused request closes the very channel replies come on (direct reply-to): we always reconnect.
      this.#brokerLimit.learn(error, true);
      if (channel === this.#channel) this.#connection?.restart('the broker closed the client channel');
    });
    channel.on('close', () => closedChannels.add(channel));
    await declareTopology(channel, this.names);
    // Direct reply-to: consumed no-ack on the same channel the requests are published from.
    await channel.consume(REPLY_TO, (msg) => msg && this.#onReply(msg), { noAck: true });
    channel.on('return', (msg: ConsumeMessage) => this.#onReturned(msg));
    const presence = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    await this.#bindings.bind(channel, presence.queue, this.names.presenceExchange, '');
    let heard!: () => void;
    this.#presenceKnown = false;
    this.#presenceHeard = new Promise<void>((resolve) => (heard = resolve));
    await channel.consume(
      presence.queue,
      (msg) => {
        if (!msg) {
          // Cancelled by the broker (the queue was deleted): no more heartbeats would come. Start again.
          if (channel === this.#channel) this.#connection?.restart('the broker cancelled the presence consumer');
          return;
        }
        try {
          const value: unknown = JSON.parse(msg.content.toString('utf8'));
          const forget = forgetSchema.safeParse(value);
          if (forget.success) this.registry.forget(forget.data.host);
          const heartbeat = heartbeatSchema.safeParse(value);
          if (heartbeat.success) {
            this.registry.record(heartbeat.data);
            if (heartbeat.data.view) {
              this.#presenceKnown = true;
              heard();
            }
          }
        } catch {
          // not ours to worry about
        }
      },
      { noAck: true },
    );
    channel.publish(this.names.presenceExchange, '', Buffer.from(JSON.stringify({ v: 1, kind: 'probe', from: 'client' })));
    this.#channel = channel;
    // Subscriptions outlive the channel: an exclusive queue went with the old one, so bind a new one.
    if (this.#eventListeners.size > 0) await this.#consumeEvents(channel);
    // After a reconnect: everything not yet answered goes out again, same id (hosts deduplicate). Gathers
    // too: hosts that already answered are ignored by the client.
    for (const pending of this.#pending.values()) this.#publish(pending);
  }

  /** Waits (briefly) until some host answered our probe, so the registry knows who is alive. */
  async #registryReady(maxWaitMs: number): Promise<void> {
    if (this.#presenceKnown) return;
    // Called on every request: clear the timer once presence was heard instead of leaving one per call.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#presenceHeard, new Promise((r) => (timer = setTimeout(r, maxWaitMs)))]);
    clearTimeout(timer);
  }

  #publish(pending: Pending): void {
    // No channel while the broker is away: every pending request is published again by the next setup.
    const channel = this.#channel;
    if (!channel) return;
    const { request, route, body } = pending;
    // Refused by the broker before (it closed the channel): it would be refused again after every reconnect.
    const brokerLimit = this.#brokerLimit.bytes;
    if (brokerLimit !== undefined && body.length > brokerLimit) {
      pending.fail(this.#tooLarge(body.length, brokerLimit, " (the broker's max_message_size)"));
      return;
    }
    // A request without a deadline expires when the client gives up on it: left in a queue, it would run
    // whenever a host next starts, long after its caller was told CLIENT_TIMEOUT.
    const expiresAt = request.deadline ?? pending.givesUpAt;
    const untilExpiry = expiresAt === undefined ? undefined : Math.max(1, expiresAt - Date.now());
    const options = {
      messageId: request.id,
      correlationId: request.id,
      replyTo: REPLY_TO,
      type: request.type,
      contentType: 'application/json',
      persistent: route !== 'broadcast',
      mandatory: true,
      headers: { [HEADERS.route]: route },
      // A request whose deadline passed while it waited is expired by the broker (moved to the bounded
      // dead-letter queue), so it never runs late.
      ...(untilExpiry === undefined ? {} : { expiration: String(untilExpiry) }),
    };
    const [exchange, key] = this.#destination(pending);
    try {
      channel.publish(exchange, key, body, options, (error) => {
        if (!error) return;
        // amqplib also calls back with an error for every unconfirmed publish when the channel closes (a
        // broker restart); those requests stay pending and the next setup publishes them again. Only a nack
        // on a live channel is a refusal. The channel's 'close' listeners run right after these callbacks,
        // so decide once they have.
        queueMicrotask(() => {
          if (!closedChannels.has(channel)) pending.fail(cloudletError('BROKER_UNAVAILABLE', `the broker did not accept the request: ${String(error)}`));
        });
      });
    } catch {
      // channel closed under us: the next setup publishes it again
    }
  }

  /**
   * Where a request is published. An any-host request that a host has accepted goes, when it is published
   * again after a reconnect, to that host's own queue, where the host answers it from the running request
   * or its stored outcome. Back in the competing queue RabbitMQ may hand it to another host, which would
   * run it a second time (hosts recognise an id they have seen, not one another host has): two VMs for
   * one create-vm.
   */
  #destination(pending: Pending): [exchange: string, routingKey: string] {
    switch (pending.route) {
      case 'direct':
        return [this.names.directExchange, pending.request.target ?? ''];
      case 'any':
        return pending.host !== undefined && !pending.acceptedHostUnreachable ? [this.names.directExchange, pending.host] : ['', this.names.anyQueue];
      case 'broadcast':
        return [this.names.broadcastExchange, ''];
    }
  }

  #onReturned(msg: ConsumeMessage): void {
    const id = msg.properties.messageId as string | undefined;
    const pending = id ? this.#pending.get(id) : undefined;
    if (!pending) return;
    if (pending.route === 'any' && msg.fields.exchange === this.names.directExchange) {
      // The accepting host takes any-host requests but has no queue of its own: the competing queue is
      // the only way left to an answer, at the risk of a second run on another host.
      this.#options.log.warn({ msgId: id, host: pending.host }, 'the host that accepted the request has no queue of its own: published again to the any-host queue');
      pending.acceptedHostUnreachable = true;
      this.#publish(pending);
    } else if (pending.route === 'direct') {
      const target = pending.request.target as string;
      // Up (it heartbeats) but with no queue of its own: it runs no routing-direct. "Never joined" would send
      // the operator looking for a typo.
      const live = this.registry.entries().find((entry) => entry.host === target && entry.state === 'up');
      const message = live
        ? `host "${target}" is up but takes no direct requests (its routes: ${live.routes.join(', ') || 'none'}): it runs no routing-direct plugin`
        : `no host "${target}" has joined this cloud (prefix ${this.#options.config.prefix})`;
      pending.fail(cloudletError('UNKNOWN_HOST', message, { target, liveHosts: this.registry.liveHosts(), ...(live && { routes: live.routes }) }));
    } else if (pending.route === 'any') {
      pending.fail(cloudletError('NO_CAPACITY', 'no host takes any-host requests on this cloud', { liveHosts: this.registry.liveHosts() }));
    } else {
      // Nobody takes broadcasts: the gather is complete with no replies.
      pending.onReply(undefined as unknown as ReplyEnvelope, []);
    }
  }

  #onReply(msg: ConsumeMessage): void {
    const decoded = decodeEnvelope(msg.content, REPLY_KINDS, this.#options.maxMessageBytes);
    if (!decoded.ok) {
      // Dropping it would leave the caller waiting for a timeout (and a gather counting the host as missing)
      // although the host answered: fail the request with the reason instead, as the local transport does.
      const unreadable = describeUnreadableReply(msg.content, decoded, msg.properties.correlationId, this.#options.maxMessageBytes);
      // Progress that cannot be read is dropped, as agents drop progress over their own limit.
      if (unreadable.kind === 'progress' || unreadable.id === undefined) return;
      this.#pending.get(unreadable.id)?.onUnreadableReply(unreadable.error, unreadable.host, liveHostsHeader(msg));
      return;
    }
    if (decoded.envelope.kind === 'progress') {
      this.#pending.get(decoded.envelope.id)?.onProgress(decoded.envelope);
      return;
    }
    // "id": null answers a request the host could not read (too large for its limit, say): the
    // correlation id, which is the request's id, still tells whose it is.
    const id = decoded.envelope.id ?? (msg.properties.correlationId as string | undefined);
    if (id === undefined) return;
    const pending = this.#pending.get(id);
    if (!pending) return; // a duplicate (after a re-publish) or a reply to a caller that gave up
    pending.onReply(decoded.envelope, liveHostsHeader(msg));
  }

  async #ensureConnected(waitUntil: number): Promise<void> {
    // After close() nothing connects again: a call fails at once rather than wait for a connection that
    // never comes (or open a new one that nobody closes).
    if (this.#closed) throw closedClientError();
    try {
      await this.#open();
      await (this.#connection as BrokerConnection).waitUntilUp(waitUntil);
    } catch (error) {
      // Closed while this call waited to connect: the same answer as a request close() found pending.
      if (this.#closed) throw closedClientError();
      throw error instanceof CloudletError ? error : cloudletError('BROKER_UNAVAILABLE', String(error));
    }
  }

  /**
   * `work` (a call's connecting and checking), unless close() came meanwhile: then CANCELLED, whatever
   * became of `work` (a presence probe on the closed connection fails with amqplib's own error), and the
   * call never registers as pending, where close() would no longer find it.
   */
  async #unlessClosed<T>(work: Promise<T>): Promise<T> {
    try {
      const value = await work;
      if (this.#closed) throw closedClientError();
      return value;
    } catch (error) {
      throw this.#closed ? closedClientError() : error;
    }
  }

  #waitLimit(request: RequestEnvelope): number {
    return request.deadline ?? Date.now() + (this.#options.inactivityTimeoutMs ?? 30_000);
  }

  /** Checks the target's presence before sending: fail at once for hosts known down or never seen. */
  async #checkTarget(target: string): Promise<void> {
    await this.#registryReady(300);
    if (this.registry.isLive(target)) return;
    if (this.registry.isDown(target)) {
      throw cloudletError('HOST_DOWN', `host "${target}" has not sent a heartbeat for ${this.#options.config.downAfterMs} ms`, { target });
    }
    // Never heard of it: does its queue exist, and does anyone consume it? (A side channel: a passive
    // declare of a missing queue closes the channel it runs on.)
    const model = this.#model as ChannelModel;
    const probe = await model.createChannel();
    probe.on('error', () => undefined);
    try {
      const { consumerCount } = await probe.checkQueue(this.names.hostQueue(target));
      if (consumerCount === 0) throw cloudletError('HOST_DOWN', `host "${target}" is not running (its queue has no consumer)`, { target });
    } catch (error) {
      if (error instanceof CloudletError) throw error;
      throw cloudletError('UNKNOWN_HOST', `no host "${target}" has joined this cloud (prefix ${this.#options.config.prefix})`, {
        target,
        liveHosts: this.registry.liveHosts(),
      });
    } finally {
      await probe.close().catch(() => undefined);
    }
  }

  /** The request as it goes on the wire; refused here if it is over the limit, which the hosts would refuse too. */
  #encode(request: RequestEnvelope): Buffer {
    const body = Buffer.from(encodeEnvelope(request));
    if (body.length > this.#options.maxMessageBytes) throw this.#tooLarge(body.length, this.#options.maxMessageBytes);
    return body;
  }

  #tooLarge(size: number, maxBytes: number, whose = ''): CloudletError {
    return cloudletError('MESSAGE_TOO_LARGE', `the request is ${size} bytes; the limit is ${maxBytes}${whose}`, { size, maxBytes });
  }

  request(request: RequestEnvelope, options: RequestOptions = {}): Promise<ReplyEnvelope> {
    return this.#inFlight.run(request.id, () => this.#request(request, options));
  }

  gather(request: RequestEnvelope, options: GatherOptions = {}): Promise<GatherResult> {
    return this.#inFlight.run(request.id, () => this.#gather(request, options));
  }

  async #request(request: RequestEnvelope, options: RequestOptions): Promise<ReplyEnvelope> {
    const route: Route = request.target === undefined ? 'any' : 'direct';
    if (options.signal?.aborted) throw cancelledError(request.id);
    const body = this.#encode(request);
    const { target } = request;
    await this.#unlessClosed(
      unlessAborted(
        (async () => {
          await this.#ensureConnected(this.#waitLimit(request));
          if (target !== undefined) await this.#checkTarget(target);
        })(),
        options.signal,
        request.id,
      ),
    );
    return new Promise<ReplyEnvelope>((resolve, reject) => {
      const inactivityMs = this.#options.inactivityTimeoutMs ?? 30_000;
      let inactivity: ReturnType<typeof setTimeout>;
      const armInactivity = () => {
        clearTimeout(inactivity);
        pending.givesUpAt = Date.now() + inactivityMs;
        inactivity = setTimeout(
          () => finish(cloudletError('CLIENT_TIMEOUT', `no reply or sign of life for "${request.type}" (${request.id}) within ${inactivityMs} ms`, { id: request.id })),
          inactivityMs,
        );
      };
      const hardLimit = request.deadline === undefined ? undefined : setTimeout(() => finish(cloudletError('CLIENT_TIMEOUT', `no reply to "${request.type}" before its deadline`, { id: request.id })), Math.max(0, request.deadline - Date.now()) + 2_000);
      const liveness = setInterval(() => {
        if (!this.#connection?.isUp) return; // a broker outage is not the host's fault; the inactivity timer still runs
        if (pending.host && this.registry.isDown(pending.host)) {
          finish(cloudletError('HOST_DOWN', `host "${pending.host}" stopped sending heartbeats while handling "${request.type}"`, { host: pending.host, id: request.id }));
        }
      }, LIVENESS_CHECK_MS);
      const finish = (outcome: ReplyEnvelope | CloudletError) => {
        if (!this.#pending.has(request.id)) return;
        this.#pending.delete(request.id);
        clearTimeout(inactivity);
        clearTimeout(hardLimit);
        clearInterval(liveness);
        options.signal?.removeEventListener('abort', onAbort);
        if (outcome instanceof CloudletError) reject(outcome);
        else resolve(outcome);
      };
      const onAbort = () => finish(cancelledError(request.id));
      const pending: Pending = {
        request,
        body,
        route,
        host: request.target,
        onReply: (reply) => finish(reply),
        onProgress: (progress) => {
          armInactivity();
          if (progress.stage === 'accepted') pending.host = progress.host;
          if (progress.stage !== 'accepted' && progress.stage !== 'alive') options.onProgress?.(progress);
        },
        onUnreadableReply: (error) => finish(error),
        fail: (error) => finish(error),
      };
      this.#pending.set(request.id, pending);
      armInactivity();
      // Aborted between the wait above and here: 'abort' fires once, never again for a listener added late.
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#publish(pending);
    });
  }

  async #gather(request: RequestEnvelope, options: GatherOptions): Promise<GatherResult> {
    if (request.target !== undefined) {
      const reply = await this.#request(request, options);
      if (options.accept?.(reply) === false) return { replies: [], missing: [request.target] };
      options.onReply?.(reply);
      return { replies: [reply], missing: [] };
    }
    if (options.signal?.aborted) throw cancelledError(request.id);
    const body = this.#encode(request);
    const waitUntil = this.#waitLimit(request);
    await this.#unlessClosed(
      unlessAborted(
        (async () => {
          await this.#ensureConnected(waitUntil);
          await this.#registryReady(300);
        })(),
        options.signal,
        request.id,
      ),
    );
    return new Promise<GatherResult>((resolve, reject) => {
      const replies = new Map<string, ReplyEnvelope>();
      // Expected: every host known alive and taking broadcasts, as we and each replying host see it.
      const expected = new Set(this.registry.liveHosts('broadcast'));
      const dropped = new Set<string>();
      const complete = () => {
        for (const host of expected) if (!replies.has(host) && this.registry.isDown(host)) dropped.add(host);
        // Nobody known yet: wait for a first reply (or the broker's return saying no host takes broadcasts).
        if (expected.size === 0) return false;
        return [...expected].every((host) => replies.has(host) || dropped.has(host));
      };
      const finish = (error?: CloudletError) => {
        if (!this.#pending.has(request.id)) return;
        this.#pending.delete(request.id);
        clearTimeout(limit);
        clearInterval(liveness);
        options.signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else {
          const missing = [...expected].filter((h) => !replies.has(h)).sort();
          const down = this.registry
            .entries()
            .filter((e) => e.state === 'down' && e.tookRoutes.includes('broadcast') && !replies.has(e.host) && !missing.includes(e.host))
            .map((e) => ({ host: e.host, agoMs: e.agoMs }));
          resolve({ replies: [...replies.values()], missing, ...(down.length > 0 && { down }) });
        }
      };
      const onAbort = () => finish(cancelledError(request.id));
      const limit = setTimeout(finish, Math.max(0, waitUntil - Date.now()));
      const liveness = setInterval(() => complete() && finish(), LIVENESS_CHECK_MS);
      const record = (reply: ReplyEnvelope, liveHosts: string[] | undefined) => {
        if (replies.has(reply.host) || options.accept?.(reply) === false) return;
        replies.set(reply.host, reply);
        expected.add(reply.host);
        for (const host of liveHosts ?? []) if (!this.registry.isDown(host)) expected.add(host);
        options.onReply?.(reply);
        if (complete()) finish();
      };
      this.#pending.set(request.id, {
        request,
        body,
        route: 'broadcast',
        host: undefined,
        // Without a deadline, the gather ends at waitUntil: a copy still queued for a busy host then expires.
        givesUpAt: waitUntil,
        onReply: (reply, liveHosts) => {
          if (reply === undefined) return finish(); // returned: no host takes broadcasts
          record(reply, liveHosts);
        },
        // The host answered, but we cannot read it: its answer is this error, as if it had sent it. From a
        // sender that cannot be told, it is nobody's (that host, if expected, stays missing).
        onUnreadableReply: (error, host, liveHosts) => {
          if (host !== undefined) record(makeReply(request, host, { ok: false, error: error.toWire() }), liveHosts);
        },
        onProgress: (progress) => {
          if (progress.stage !== 'accepted' && progress.stage !== 'alive') options.onProgress?.(progress);
        },
        // Too large for the broker: no host got it, so there is nothing to gather. Otherwise (the broker
        // refused it, the client closed) the gather ends with what came so far.
        fail: (error) => finish(error.code === 'MESSAGE_TOO_LARGE' ? error : undefined),
      });
      // As for request(): the caller gives up on the whole gather, whatever came so far.
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#publish(this.#pending.get(request.id) as Pending);
    });
  }

  /** Hosts known from heartbeats (after probing), for `cloudlet hosts`. */
  async hosts(waitMs = 1_000): Promise<(HostEntry & { state: 'up' | 'down'; agoMs: number })[]> {
    await this.#ensureConnected(Date.now() + waitMs + 5_000);
    await this.#registryReady(waitMs);
    // Hosts the first answer named get a moment to answer for themselves.
    const deadline = Date.now() + Math.min(waitMs, 500);
    while (Date.now() < deadline && this.registry.entries().some((e) => e.state === 'up' && !e.heartbeat)) await new Promise((r) => setTimeout(r, 25));
    // Always yield to the event loop (a timer, not a microtask). Without it a call that waited for nothing
    // above resolved with no I/O in between, and a caller polling hosts() in a loop (until a host shows up,
    // say) spun on microtasks and never read the heartbeat it was waiting for.
    await new Promise((r) => setTimeout(r, 0));
    return this.registry.entries();
  }

  /** `cloudlet hosts forget`: takes a host that is down out of service (forget-host.ts). */
  async forgetHost(host: string, waitMs = 1_000): Promise<ForgetResult> {
    await this.hosts(waitMs);
    const model = this.#model;
    const channel = this.#channel;
    if (!model || !channel) throw cloudletError('CONNECTION_LOST', 'the broker connection dropped before the host could be forgotten');
    return forgetHost(host, { model, channel, names: this.names, registry: this.registry, prefix: this.#options.config.prefix });
  }

  async subscribe(onEvent: (event: EventEnvelope) => void): Promise<() => Promise<void>> {
    await this.#ensureConnected(Date.now() + 10_000);
    this.#eventListeners.add(onEvent);
    const channel = this.#channel as ConfirmChannel;
    try {
      // Checked before any await, so two subscribes at once share one consumer.
      await (this.#eventsChannel === channel && this.#events ? this.#events : this.#consumeEvents(channel));
    } catch (error) {
      // Refused: the caller is told, and the listener must not start receiving after a reconnect.
      this.#eventListeners.delete(onEvent);
      throw error;
    }
    return async () => {
      this.#eventListeners.delete(onEvent);
      if (this.#eventListeners.size > 0 || !this.#events) return;
      const consuming = this.#events;
      this.#events = undefined;
      this.#eventsChannel = undefined;
      const consumer = await consuming.catch(() => undefined);
      if (!consumer) return;
      // Cancelling the consumer deletes the (auto-delete) queue: binding it again would close the channel.
      this.#bindings.forget(consumer.queue);
      await consumer.channel.cancel(consumer.consumerTag).catch(() => undefined);
    };
  }

  /** One exclusive queue bound to every event, delivering to every listener. */
  #consumeEvents(channel: ConfirmChannel): Promise<{ channel: ConfirmChannel; consumerTag: string; queue: string }> {
    this.#eventsChannel = channel;
    this.#events = (async () => {
      const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
      await this.#bindings.bind(channel, queue, this.names.eventsExchange, '#');
      const { consumerTag } = await channel.consume(
        queue,
        (msg) => {
          if (!msg) {
            // Cancelled by the broker (the queue was deleted): start again, which subscribes anew.
            if (channel === this.#channel) this.#connection?.restart('the broker cancelled the events consumer');
            return;
          }
          const decoded = decodeEnvelope(msg.content, 'event', this.#options.maxMessageBytes);
          if (decoded.ok) for (const listener of this.#eventListeners) listener(decoded.envelope);
        },
        { noAck: true },
      );
      return { channel, consumerTag, queue };
    })();
    return this.#events;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const pending of this.#pending.values()) pending.fail(closedClientError());
    this.#bindings.close();
    await this.#connection?.close();
  }
}

function closedClientError(): CloudletError {
  return cloudletError('CANCELLED', 'the client was closed; a closed client sends nothing (make a new one)');
}

/** The hosts a broadcast reply's sender sees alive (x-cloudlet-live-hosts), if it names them. */
function liveHostsHeader(msg: ConsumeMessage): string[] | undefined {
  const header = msg.properties.headers?.[HEADERS.liveHosts];
  if (typeof header !== 'string') return undefined;
  try {
    const hosts: unknown = JSON.parse(header);
    return Array.isArray(hosts) ? hosts.filter((h): h is string => typeof h === 'string') : undefined;
  } catch {
    return undefined;
  }
}
