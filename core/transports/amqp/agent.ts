/**
 * The agent side of the RabbitMQ transport. Guarantees, in order of importance:
 * - a request is acknowledged only after its reply was confirmed by the broker (at-least-once);
 * - a request id seen before is answered from the stored outcome, never run twice;
 * - a request that keeps killing the agent is dead-lettered after `maxDeliveries` instead of looping;
 * - progress (and a keep-alive while work runs) flows to the caller, so long work never looks dead.
 */
import { join } from 'node:path';
import { Buffer } from 'node:buffer';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, Options } from 'amqplib';
import type { AmqpTransportConfig } from '../../config/schema.ts';
import { CloudletError, cloudletError } from '../../errors.ts';
import { encodeEnvelope, makeProgress, makeReply, type EventEnvelope, type ProgressEnvelope, type ReplyEnvelope, type RequestEnvelope } from '../../envelope.ts';
import type { Logger } from '../../logger.ts';
import type { AgentTransport, DeliveryListener, ReplySealer } from '../transport.ts';
import { BindingKeeper } from './bindings.ts';
import { LearnedBrokerLimit } from './broker-limits.ts';
import { BrokerConnection } from './connection.ts';
import { HEADERS, amqpNames, type AmqpNames } from './names.ts';
import { AgentPresence } from './agent-presence.ts';
import type { HostRegistry, InboundRoute } from './host-registry.ts';
import { OutcomeStore } from './outcome-store.ts';
import { declareTopology } from './topology.ts';
import { hostIdTaken } from './host-id-taken.ts';

export interface AmqpAgentTransportOptions {
  config: AmqpTransportConfig;
  hostId: string;
  maxMessageBytes: number;
  stateDir: string;
  log: Logger;
  identity: { version: string; plugins: string[]; startedAt: number };
  /** Types whose handlers answer a repeat themselves: a finished one sent again runs again (handlesRepeats). */
  handlesRepeats?: ReadonlySet<string>;
  /** False: the broker connection writes frame by frame (BrokerConnectionOptions.coalesceWrites); for tests. */
  coalesceWrites?: boolean;
}

/** How long a finished request waits for the broker to come back before its reply is given up on. */
const REPLY_RECONNECT_WAIT_MS = 60_000;
/** How long an any-host request waits at least for the broker to confirm its "accepted" (see #stillHeld). */
const MIN_CONFIRM_WAIT_MS = 2_000;

/** The AMQP heartbeat an agent asks for (BrokerConnectionOptions.amqpHeartbeatSeconds); RabbitMQ advises 5–20 s. */
const AMQP_HEARTBEAT_SECONDS = 10;
/** How many times a reply whose publish was not confirmed (the connection went) is sent again. */
const UNCONFIRMED_REPLY_RESENDS = 3;
/** How often a reply held back by an outcome line the file refused is tried again (frame-by-frame writes only). */
const HELD_REPLY_RETRY_MS = 1_000;
/**
 * Messages larger than this go out on a channel of their own (see #publishLarge). RabbitMQ's smallest
 * default max_message_size is 16 MiB (4.x; 128 MiB before), and none in practice is set below this.
 */
const LARGE_MESSAGE_BYTES = 64 * 1024;
/** amqplib's error for a publish the broker nacked. */
const NACKED = 'message nacked';
/** Events kept while the broker is unreachable; the oldest go first. */
const MAX_PENDING_EVENTS = 1_000;
/**
 * How long a host waits before it runs again an any-host request it has already refused (the request came
 * back: see #cameBack), and how far apart such runs are on the host, whichever request they are. Without
 * them, a full host whose only candidate takes nothing (a host that died or stopped, not yet judged down)
 * ran the handler and handed the request on in a hot loop until then: ~200 times a second, each logged.
 * With them, each request at most 4 times a second and the host at most 20. Where the other hosts are alive,
 * RabbitMQ gives a request back to this host about once in as many hosts as consume the queue, which then
 * costs at least the pause.
 */
const CAME_BACK_PAUSE_MS = 250;
const CAME_BACK_SPACING_MS = 50;

interface InFlightRequest {
  /** Extra reply addresses: the same id redelivered while the first copy still runs. */
  replyTo: Set<string>;
  /** Those copies: acked with the first one, once its reply is confirmed, never before. */
  duplicates: { channel: ConfirmChannel; msg: ConsumeMessage }[];
  /**
   * The reply, once it is final and about to go out (until its confirm the request stays in #inFlight): a
   * copy that comes in now is too late to share its publish, and gets it sent to its own address.
   */
  answer?: { envelope: ReplyEnvelope; encoded: string | undefined };
  /**
   * Settles once the progress sent so far has gone out. Large progress goes on another channel (see
   * #publishLarge) and is confirmed first, so later progress and the reply wait for it: progress always
   * reaches the caller before its reply, in the order it was sent.
   */
  progressSent?: Promise<unknown>;
}

export class AmqpAgentTransport implements AgentTransport {
  readonly kind = 'amqp';
  readonly names: AmqpNames;
  readonly registry: HostRegistry;
  readonly #presence: AgentPresence;
  readonly #options: AmqpAgentTransportOptions;
  readonly #routes = new Set<InboundRoute>();
  readonly #inFlight = new Map<string, InFlightRequest>();
  #connection: BrokerConnection | undefined;
  #channel: ConfirmChannel | undefined;
  #consumerTags: string[] = [];
  #store: OutcomeStore | undefined;
  #onDelivery: DeliveryListener | undefined;
  /** Signs and measures the replies made here rather than by the dispatcher (see AgentTransport.listen). */
  #sealReply: ReplySealer | undefined;
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #bindings: BindingKeeper | undefined;
  /** The broker's max_message_size, once it refused a message over it (broker-limits.ts). */
  readonly #brokerLimit: LearnedBrokerLimit;
  #model: ChannelModel | undefined;
  /** The channel for large messages on this connection (see #publishLarge), made when first needed. */
  #largeChannel: Promise<ConfirmChannel> | undefined;
  /** Replies waiting to be tried again (see #publishReply); woken at once by close(). */
  readonly #pauses = new Set<() => void>();
  #closing = false;
  #accepting = true;
  /** The earliest time the next came-back request may run again on this host (#cameBackTurn). */
  #nextCameBackAt = 0;
  readonly #pendingEvents: EventEnvelope[] = [];

  constructor(options: AmqpAgentTransportOptions) {
    this.#options = options;
    this.names = amqpNames(options.config.prefix);
    this.#presence = new AgentPresence({
      hostId: options.hostId,
      identity: options.identity,
      config: options.config,
      presenceExchange: this.names.presenceExchange,
      routes: () => (this.#accepting ? [...this.#routes] : []),
      currentChannel: () => this.#channel,
      isUp: () => this.#connection?.isUp ?? false,
      restart: (reason) => this.#connection?.restart(reason),
    });
    this.registry = this.#presence.registry;
    this.#brokerLimit = new LearnedBrokerLimit(options.log, options.maxMessageBytes);
  }

  describe(): string {
    return `amqp ${this.#connection?.describe() ?? this.#options.config.url.replace(/\/\/[^@]*@/, '//***@')} prefix ${this.#options.config.prefix}`;
  }

  isUp(): boolean {
    // Not while the broker has closed our channel and restart() has yet to connect again: nothing arrives.
    return (this.#connection?.isUp ?? false) && this.#channel !== undefined;
  }

  addInboundRoute(route: InboundRoute): void {
    this.#routes.add(route);
  }

  async listen(onDelivery: DeliveryListener, sealReply?: ReplySealer): Promise<void> {
    this.#onDelivery = onDelivery;
    this.#sealReply = sealReply;
    this.#bindings = new BindingKeeper(this.#options.config.bindingRefreshMs);
    this.#store = await OutcomeStore.open(join(this.#options.stateDir, 'outcomes', `${this.#options.hostId}.jsonl`), this.#options.config.outcomeHistory);
    this.#connection = new BrokerConnection({
      url: this.#options.config.url,
      log: this.#options.log,
      setup: (model) => this.#setup(model),
      maxReconnectDelayMs: Math.min(Math.max(this.#options.config.heartbeatMs, 100), 5_000),
      amqpHeartbeatSeconds: AMQP_HEARTBEAT_SECONDS,
      connectionName: `cloudlet agent ${this.#options.hostId} (prefix ${this.#options.config.prefix})`,
      beforeFrameWrite: () => this.#writeOutcomes(),
      coalesceWrites: this.#options.coalesceWrites,
    });
    this.#connection.on('down', () => {
      this.#channel = undefined;
      this.#largeChannel = undefined;
      this.registry.noteOutage();
    });
    await this.#connection.open();
    this.#heartbeatTimer = setInterval(() => this.#presence.tick(), this.#options.config.heartbeatMs);
    this.#heartbeatTimer.unref();
  }

  /** Runs on every (re)connect: topology, consumers, and an announcement so others see us at once. */
  async #setup(model: ChannelModel): Promise<void> {
    const { names } = this;
    const { hostId, config } = this.#options;
    this.registry.forgiveSilence();
    this.#model = model;
    this.#largeChannel = undefined;
    this.#brokerLimit.connected();
    const channel = await model.createConfirmChannel();
    channel.on('error', (error: Error) => {
      this.#options.log.warn({ reason: error.message }, 'broker channel error');
      // A message of at most LARGE_MESSAGE_BYTES refused (a broker limit below that).
      this.#brokerLimit.learn(error, true);
      // The channel is gone with its consumers, while the connection may stay up: start again.
      if (channel === this.#channel) this.#connection?.restart('the broker closed the channel');
    });
    // The connection stays up for a while after that (restart() pauses first), and amqplib throws at once on
    // a publish, ack or nack on a closed channel: from here on nothing may use this one.
    channel.on('close', () => {
      if (channel === this.#channel) this.#channel = undefined;
    });
    // A consumer the broker cancelled (its queue was deleted): start again, which declares the queue anew.
    const cancelled = (queue: string) => {
      if (channel === this.#channel) this.#connection?.restart(`the broker cancelled the consumer of ${queue}`);
    };
    const bindings = this.#bindings as BindingKeeper;
    await declareTopology(channel, names);
    // Bound with the topology; kept bound too, so dead-lettered requests are not lost silently.
    bindings.keep(channel, names.deadLetter, names.deadLetter, '');
    await channel.prefetch(config.prefetch);
    const tags: string[] = [];
    const deadLetterArgs = { 'x-dead-letter-exchange': names.deadLetter };
    if (this.#routes.has('direct')) {
      const queue = names.hostQueue(hostId);
      await channel.assertQueue(queue, { durable: true, arguments: deadLetterArgs });
      await bindings.bind(channel, queue, names.directExchange, hostId);
      // Exclusive: a second agent with this host id is refused here instead of taking half the requests.
      if (this.#accepting) tags.push((await this.#held(channel.consume(queue, (msg) => (msg ? this.#consume(channel, msg, 'direct') : cancelled(queue)), { exclusive: true }))).consumerTag);
    }
    if (this.#routes.has('any')) {
      await channel.assertQueue(names.anyQueue, { durable: true, arguments: deadLetterArgs });
      if (this.#accepting) tags.push((await channel.consume(names.anyQueue, (msg) => (msg ? this.#consume(channel, msg, 'any') : cancelled(names.anyQueue)))).consumerTag);
    }
    // A draining agent that reconnects takes no work, and must not hold the queues a successor may have
    // taken already (they are exclusive): only its presence queue, to keep sending and hearing heartbeats.
    if (this.#routes.has('broadcast') && this.#accepting) {
      const queue = names.broadcastQueue(hostId);
      await this.#held(channel.assertQueue(queue, { exclusive: true, autoDelete: true, arguments: deadLetterArgs }));
      await bindings.bind(channel, queue, names.broadcastExchange, '');
      tags.push((await channel.consume(queue, (msg) => (msg ? this.#consume(channel, msg, 'broadcast') : cancelled(queue)))).consumerTag);
    }
    const presence = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    await bindings.bind(channel, presence.queue, names.presenceExchange, '');
    await channel.consume(presence.queue, (msg) => (msg ? this.#presence.onMessage(msg) : cancelled(presence.queue)), { noAck: true });
    this.#channel = channel;
    this.#consumerTags = this.#accepting ? tags : [];
    if (!this.#accepting) {
      // stopAccepting came while this setup ran: what it consumed meanwhile is cancelled here.
      bindings.forget(names.broadcastQueue(hostId)); // cancelling its consumer deletes it
      for (const tag of tags) await channel.cancel(tag);
    }
    this.#presence.announce(channel);
    this.#flushEvents(channel);
  }

  /**
   * A queue of this host held by another connection: another agent runs with this host id (host-id-taken.ts).
   * At start the agent fails with AGENT_ALREADY_RUNNING; on a reconnect (the other one started meanwhile)
   * the error is logged each time the connection tries again, since nothing else would say why.
   */
  async #held<T>(operation: Promise<T>): Promise<T> {
    try {
      return await operation;
    } catch (error) {
      const taken = hostIdTaken(error, this.#options.hostId, this.#options.config.prefix);
      if (!taken) throw error;
      if (this.#connection?.hasBeenUp) {
        const stale = 'or, just after a network failure, this agent\'s own earlier connection, which the broker closes once its heartbeat times out';
        this.#options.log.error({ code: taken.code, ...(taken.details as object) }, `${taken.message} (${stale}); trying again`);
      }
      throw taken;
    }
  }

  /**
   * MESSAGE_TOO_LARGE in place of a reply the broker refuses (or would: #publish measures every message
   * against a known limit). A stored outcome keeps the full reply: a redelivery is measured again.
   */
  #tooLargeReply(msg: ConsumeMessage, reply: ReplyEnvelope, error: CloudletError): { reply: ReplyEnvelope; encoded?: string } {
    this.#options.log.warn({ msgId: reply.id, ...(error.details as object) }, error.message);
    return this.#ownReply(msg, reply.id, error);
  }

  /**
   * amqplib drops what a consume callback returns: a failure here (the channel closed under a nack, the
   * outcome file not writable) would be an unhandled rejection, which ends the process. The message stays
   * unacked and comes back.
   */
  #consume(channel: ConfirmChannel, msg: ConsumeMessage, route: InboundRoute): void {
    this.#onMessage(channel, msg, route).catch((error: unknown) =>
      this.#options.log.error({ err: error, msgId: msg.properties.messageId, route }, 'failed to take a request; it stays unacked and will be redelivered'),
    );
  }

  async #onMessage(channel: ConfirmChannel, msg: ConsumeMessage, route: InboundRoute): Promise<void> {
    const { log } = this.#options;
    const store = this.#store as OutcomeStore;
    const replyTo = msg.properties.replyTo as string | undefined;
    const id = msg.properties.messageId as string | undefined;
    if (!replyTo) {
      // Nobody to tell: a broken or foreign message. Park it for inspection rather than loop or drop it.
      log.warn({ route, msgId: id }, 'request without reply_to: rejected to the dead-letter queue');
      this.#settle(channel, msg, 'dead-letter');
      return;
    }
    if (id) {
      const stored = store.replyFor(id);
      // A type whose handler answers repeats itself runs again: its stored reply may be stale by now.
      if (stored && !(stored.type !== undefined && this.#options.handlesRepeats?.has(stored.type))) {
        log.info({ msgId: id, route }, 'redelivered request answered from its stored outcome');
        await this.#publishReply(channel, [replyTo], stored, msg, route === 'broadcast');
        return;
      }
      const running = this.#inFlight.get(id);
      if (running?.answer) {
        // Its reply went out a moment ago (a handlesRepeats type, which skips the stored outcome above).
        log.info({ msgId: id, route }, 'request sent again as its run answered: given that answer');
        await this.#publishReply(channel, [replyTo], running.answer.envelope, msg, route === 'broadcast', running.answer.encoded);
        return;
      }
      if (running) {
        log.debug({ msgId: id, route }, 'request sent again while it runs: it gets the answer of that run');
        running.replyTo.add(replyTo);
        running.duplicates.push({ channel, msg });
        return;
      }
      if (store.attempts(id) >= this.#options.config.maxDeliveries) {
        const error = cloudletError('DEAD_LETTERED', `request ${id} was started ${store.attempts(id)} times without finishing; it was moved to ${this.names.deadLetter}`);
        log.error({ msgId: id, code: error.code }, error.message);
        const { reply, encoded } = this.#ownReply(msg, id, error);
        await this.#publish(channel, '', replyTo, reply, msg.properties.correlationId, true, undefined, encoded).catch(() => undefined);
        this.#settle(channel, msg, 'dead-letter');
        return;
      }
    }
    const receivedAt = Date.now();
    const inFlight: InFlightRequest = { replyTo: new Set([replyTo]), duplicates: [] };
    const progressBase = { id: id ?? 'unknown', type: (msg.properties.type as string) || 'unknown' } as RequestEnvelope;
    // Registered before the first await: a second copy in the same socket read is handled before this
    // function resumes, and must find the first one running instead of running too (copies that come during
    // the wait below join it the same way).
    if (id) this.#inFlight.set(id, inFlight);
    if (route === 'any' && this.#cameBack(msg)) {
      const waitMs = this.#cameBackTurn(receivedAt) - Date.now();
      log.debug({ msgId: id, route, waitMs }, 'any-host request came back to this host, which refused it before: it runs again after a pause');
      await this.#pause(waitMs);
      // The agent began to stop meanwhile, or the channel went: not ours to start now. Back to the queue,
      // for another host (or this one again once it runs), with the copies that joined it.
      if (this.#closing || !this.#accepting || channel !== this.#channel) {
        if (id) this.#inFlight.delete(id);
        this.#settle(channel, msg, 'requeue');
        this.#settleCopies(inFlight, 'requeue');
        return;
      }
    }
    if (id) {
      // For an any-host request the caller does not know which host took it: "accepted" tells it, so it can
      // watch that host's heartbeat. Sent at once, beside the start line, and confirmed: see #stillHeld.
      const held = route === 'any' ? this.#stillHeld(channel, msg, makeProgress(progressBase, this.#options.hostId, 'accepted', { route }), receivedAt) : undefined;
      try {
        await store.recordStart(id);
      } catch (cause) {
        this.#inFlight.delete(id);
        store.cancelStart(id);
        await this.#refuseUnrecorded(channel, msg, route, inFlight, id, cause as Error);
        return;
      }
      const holding = held && (await held);
      if (holding === 'lost' || holding === 'expired') {
        this.#inFlight.delete(id);
        store.cancelStart(id);
        // Copies that came meanwhile (on a new connection, say) have callers too: back to the queue with them.
        this.#settleCopies(inFlight, 'requeue');
        if (holding === 'lost') {
          log.warn({ msgId: id, route }, 'any-host request not run: the channel it came on closed before the broker confirmed it was still ours; the broker gives it to another host');
        } else {
          // Its caller has given up: parked for inspection, as the broker does with a request that expires.
          this.#settle(channel, msg, 'dead-letter');
          log.warn({ msgId: id, route }, 'any-host request not run: the broker had not confirmed it was still ours when its caller gave up (a broker resource alarm?); moved to the dead-letter queue');
        }
        return;
      }
    }
    // Never throws, nor rejects: it runs in the dispatcher's keep-alive timer and in a promise chain, where a
    // throw would end the process, and before the request is handed on, where it would leave the request
    // registered as running with nothing to answer it (a redelivery would wait on it forever).
    const sendProgress = (envelope: ProgressEnvelope) => {
      const publishAll = () => {
        const current = this.#channel;
        if (!this.#connection?.isUp || !current) return undefined; // progress is best effort
        const sends = [...inFlight.replyTo].map((target) =>
          this.#publish(current, '', target, envelope, msg.properties.correlationId, false).catch((error: unknown) =>
            log.debug({ msgId: id, stage: envelope.stage, reason: (error as Error).message }, 'progress not sent'),
          ),
        );
        return Promise.all(sends);
      };
      inFlight.progressSent = inFlight.progressSent ? inFlight.progressSent.then(publishAll) : publishAll();
    };
    // (Keep-alives while the work runs come from the dispatcher.)

    (this.#onDelivery as DeliveryListener)({
      body: msg.content,
      replyable: true,
      sender: {
        transport: 'amqp',
        route,
        exchange: msg.fields.exchange,
        routingKey: msg.fields.routingKey,
        appId: msg.properties.appId,
        userId: msg.properties.userId,
        redelivered: msg.fields.redelivered,
      },
      progress: (envelope) => sendProgress(envelope),
      reply: async (envelope, encoded, reseal) => {
        try {
          if (route === 'any' && envelope.error?.code === 'NO_CAPACITY') {
            // A sign of life first: the caller's patience then starts again with the copy's TTL, which a copy
            // without a deadline takes over whole (#handBack), so the copy expires about when the caller gives up.
            sendProgress(makeProgress(progressBase, this.#options.hostId, 'alive'));
            await inFlight.progressSent;
            if (await this.#handBack(channel, msg, envelope)) {
              // The copies that came in meanwhile (the handed-on one among them, if it came straight back
              // here) have callers of their own: back to the queue with them, to be taken like any request.
              this.#settleCopies(inFlight, 'requeue');
              return;
            }
            // #handBack added `refusedBy` to the error: the signature and the JSON given no longer match it.
            if (reseal) ({ reply: envelope, encoded } = reseal(envelope));
            else encoded = undefined;
          }
          // A retryable failure (BUSY, TIMEOUT, SHUTTING_DOWN, …) is not an outcome: the same id sent again
          // must be tried again, not answered with the old failure.
          // (An abandoned line that cannot be written yet stays pending, and holds the reply back with it.)
          if (id && envelope.error?.retryable) await store.recordAbandoned(id).catch(() => undefined);
          else if (id) store.recordDone(id, envelope, encoded); // written before the reply's frames (#publishReply)
          inFlight.answer = { envelope, encoded };
          await inFlight.progressSent;
          const confirmed = await this.#publishReply(channel, [...inFlight.replyTo], envelope, msg, route === 'broadcast', encoded);
          // Unconfirmed: the copies stay unacked too, and come back to be answered from the stored outcome.
          if (confirmed) this.#settleCopies(inFlight, 'ack');
        } finally {
          if (id) this.#inFlight.delete(id);
        }
      },
    });
  }

  /**
   * Whether an any-host delivery is still ours to run. A host that stalled (SIGSTOP, heavy swap) past the
   * broker's heartbeat timeout finds deliveries in its socket that the broker has since given to another
   * host, which may have run them already: run here too, one create made two VMs. A message published on
   * the same channel after the delivery, and confirmed, proves the channel was still open when the broker
   * read it, so the delivery had not been handed on; a closed channel fails the publish instead. Once it is
   * ours, a connection lost while it runs still hands it on: at-least-once, as for a host that dies.
   * A broker's nack (the channel stays open) leaves the delivery ours.
   */
  async #stillHeld(channel: ConfirmChannel, msg: ConsumeMessage, accepted: ProgressEnvelope, receivedAt: number): Promise<'held' | 'lost' | 'expired'> {
    const confirmed = this.#publish(channel, '', msg.properties.replyTo as string, accepted, msg.properties.correlationId, true).then(
      () => 'held' as const,
      // Only a closed channel (amqplib's "channel closed", or "Channel closed" thrown at once) hands the
      // delivery on; anything else (a nack) leaves it ours, on a channel that is still open.
      (error: unknown) => (/^channel closed$/i.test((error as Error).message) ? ('lost' as const) : ('held' as const)),
    );
    // A broker in a resource alarm stops reading our socket: the confirm comes once the alarm clears, maybe
    // hours later, when the caller has long given up. Not run then: past its broker TTL (the caller's
    // patience, or what is left to its deadline) counted from when it arrived here. At least 2 s, so that a
    // request arriving at the end of its time is still answered (DEADLINE_EXCEEDED) rather than parked.
    const expiration = Number(msg.properties.expiration);
    if (msg.properties.expiration === undefined || !Number.isFinite(expiration)) return confirmed;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<'expired'>((resolve) => {
      timer = setTimeout(() => resolve('expired'), Math.max(expiration, MIN_CONFIRM_WAIT_MS) - (Date.now() - receivedAt));
      timer.unref();
    });
    try {
      return await Promise.race([confirmed, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A request whose start could not be written is not run: run unrecorded, a crash would make it run again
   * unnoticed. Left unanswered, it would hang its caller until the channel closes. So it is answered with
   * a retryable error, and acked once that reply is confirmed, with the copies that came in meanwhile.
   */
  async #refuseUnrecorded(channel: ConfirmChannel, msg: ConsumeMessage, route: InboundRoute, inFlight: InFlightRequest, id: string, cause: Error): Promise<void> {
    const { hostId, log } = this.#options;
    const error = cloudletError('STATE_UNWRITABLE', `host "${hostId}" could not record request ${id} in its outcome store (${cause.message}); it did not run it`, { host: hostId });
    log.error({ msgId: id, code: error.code, err: cause }, error.message);
    const { reply, encoded } = this.#ownReply(msg, id, error);
    if (await this.#publishReply(channel, [...inFlight.replyTo], reply, msg, route === 'broadcast', encoded)) this.#settleCopies(inFlight, 'ack');
  }

  /** An error reply made here, signed and measured like the dispatcher's when the agent gave a sealer. */
  #ownReply(msg: ConsumeMessage, id: string | null, error: CloudletError): { reply: ReplyEnvelope; encoded?: string } {
    const reply = makeReply({ id, type: msg.properties.type as string | undefined }, this.#options.hostId, { ok: false, error: error.toWire() });
    return this.#sealReply ? this.#sealReply(reply) : { reply };
  }

  /**
   * The copies of a request (same id) that came in while it ran: acked once its reply is confirmed (the
   * reply went to their addresses too), or put back in their queue when the request was handed on.
   */
  #settleCopies(inFlight: InFlightRequest, how: 'ack' | 'requeue'): void {
    for (const { channel, msg } of inFlight.duplicates) {
      // A copy whose channel is gone comes back by itself.
      if (channel === this.#channel) this.#settle(channel, msg, how);
    }
  }

  /** An any-host request this host has refused already (it is in the request's refused-by header). */
  #cameBack(msg: ConsumeMessage): boolean {
    return parseJsonArray(msg.properties.headers?.[HEADERS.refusedBy]).includes(this.#options.hostId);
  }

  /**
   * When a request that came back (received at `receivedAt`) may run again: CAME_BACK_PAUSE_MS after it
   * came, and CAME_BACK_SPACING_MS after the one before it on this host, whichever is later.
   */
  #cameBackTurn(receivedAt: number): number {
    const at = Math.max(receivedAt + CAME_BACK_PAUSE_MS, this.#nextCameBackAt);
    this.#nextCameBackAt = at + CAME_BACK_SPACING_MS;
    return at;
  }

  /**
   * A host without capacity passes an any-host request on to the next host, naming itself in a header.
   * Once every live host that takes any-host requests refused, the caller gets NO_CAPACITY.
   * Returns false when the request should be answered instead.
   */
  async #handBack(channel: ConfirmChannel, msg: ConsumeMessage, reply: ReplyEnvelope): Promise<boolean> {
    const previous = parseJsonArray(msg.properties.headers?.[HEADERS.refusedBy]);
    const refusedBy = [...new Set([...previous, this.#options.hostId])];
    const candidates = this.registry.liveHosts('any').filter((host) => !refusedBy.includes(host));
    if (candidates.length === 0 || refusedBy.length > 100) {
      if (reply.error) reply.error.details = { ...(reply.error.details as object), refusedBy };
      return false;
    }
    const headers = { ...msg.properties.headers, [HEADERS.refusedBy]: JSON.stringify(refusedBy) };
    // The copy's broker TTL is what is left until the request's deadline, not a fresh one. Without a
    // deadline, the client's TTL (how long it waits for a sign of life) starts again, as its wait did at the
    // "alive" sent just before this.
    const properties: Record<string, unknown> = { ...msg.properties, headers, persistent: true };
    const deadline = requestDeadline(msg.content);
    if (deadline !== undefined) properties.expiration = String(Math.max(1, deadline - Date.now()));
    try {
      await this.#withChannel(
        (current) =>
          new Promise<void>((resolve, reject) =>
            current.publish('', this.names.anyQueue, msg.content, properties, (error) => (error ? reject(error) : resolve())),
          ),
      );
    } catch (error) {
      // Not confirmed because the connection or channel went: the copy may be in the queue, and the original
      // comes back by itself with its channel. Refused (a nack: the queue rejects publishes when full, say):
      // nobody else has the request, so its caller is told NO_CAPACITY now, not left waiting for nothing.
      if ((error as Error).message !== NACKED) throw error;
      this.#options.log.warn({ msgId: msg.properties.messageId, refusedBy, reason: (error as Error).message }, 'no capacity here, and could not hand the request on: answering NO_CAPACITY');
      if (reply.error) reply.error.details = { ...(reply.error.details as object), refusedBy };
      return false;
    }
    if (channel === this.#channel) this.#settle(channel, msg, 'ack');
    // Not written yet if the disk is full: it stays pending, and the hand-on is done either way.
    await this.#store?.recordAbandoned(msg.properties.messageId as string).catch(() => undefined);
    this.#options.log.info({ msgId: msg.properties.messageId, refusedBy, candidates }, 'no capacity here: handed the request on to another host');
    return true;
  }

  /**
   * Publishes a reply and acks its request once the broker confirmed it; says whether it did. On a
   * connection that writes frame by frame, a reply whose own outcome line the file refuses is held back and
   * tried again every HELD_REPLY_RETRY_MS, its request kept unacked, until the line is written (or the
   * channel goes: the request then comes back by itself, to be answered from its outcome).
   */
  async #publishReply(deliveredOn: ConfirmChannel, targets: string[], reply: ReplyEnvelope, msg: ConsumeMessage, withLiveHosts = false, encoded?: string): Promise<boolean> {
    const original = reply;
    for (let attempt = 0; ; attempt++) {
      const sent = await this.#publishReplyOnce(deliveredOn, targets, reply, msg, withLiveHosts, encoded, attempt === 0);
      if (sent instanceof CloudletError) {
        if (reply !== original) {
          // Even MESSAGE_TOO_LARGE is over the broker's limit (a limit of a few hundred bytes): nothing this
          // host says would get through. Park the request rather than try forever.
          this.#options.log.error({ msgId: original.id, ...(sent.details as object) }, `not even an error reply fits the broker's limit: the request is dead-lettered (${sent.message})`);
          if (deliveredOn === this.#channel) this.#settle(deliveredOn, msg, 'dead-letter');
          return false;
        }
        // Over the broker's limit (refused on the large-message channel, or known before): answer that instead.
        ({ reply, encoded } = this.#tooLargeReply(msg, reply, sent));
        continue;
      }
      if (sent === 'sent') return true;
      if (sent === 'unconfirmed') {
        // Sent again on the next connection (#withChannel waits for it): the redelivery that would answer it
        // from the stored outcome does not come once the request's broker TTL has run out, and a request
        // without a deadline has only the client's patience as its TTL (a long create-vm outlives it). The
        // caller keeps the first of any duplicate replies.
        if (this.#closing || attempt >= UNCONFIRMED_REPLY_RESENDS) return false;
        await this.#pause(HELD_REPLY_RETRY_MS);
        if (this.#closing) return false;
        continue;
      }
      if (attempt === 0) this.#options.log.warn({ msgId: reply.id }, 'reply held back until its outcome line is written; trying again every second');
      await this.#pause(HELD_REPLY_RETRY_MS);
      if (this.#closing || deliveredOn !== this.#channel) return false;
    }
  }

  async #publishReplyOnce(
    deliveredOn: ConfirmChannel,
    targets: string[],
    reply: ReplyEnvelope,
    msg: ConsumeMessage,
    withLiveHosts: boolean,
    encoded: string | undefined,
    logWriteFailure: boolean,
  ): Promise<'sent' | 'unconfirmed' | 'held' | CloudletError> {
    const headers = withLiveHosts ? { [HEADERS.liveHosts]: JSON.stringify(this.registry.liveHosts('broadcast')) } : undefined;
    let held = false;
    try {
      // Replies go out on the current channel: after a reconnect the one the request came in on is gone.
      // A reply to a caller that is gone is dropped by the broker (direct reply-to); that is fine.
      await this.#withChannel((channel) => {
        // The outcome lines are written right before the frames go out, with every other line due by then
        // (BrokerConnection's beforeFrameWrite; if that fails, the connection drops and brings the request
        // back). A connection that cannot do that has them written now, and holds back only a reply whose
        // own line is still unwritten (others, such as a STATE_UNWRITABLE refusal, may go).
        if (!this.#connection?.coalescesWrites) {
          try {
            this.#writeOutcomes(logWriteFailure);
          } catch (error) {
            const id = msg.properties.messageId as string | undefined;
            held = id !== undefined && (this.#store?.hasUnwritten(id) ?? false);
            if (held) throw error;
          }
        }
        return Promise.all(targets.map((target) => this.#publish(channel, '', target, reply, msg.properties.correlationId, true, headers, encoded)));
      });
      if (deliveredOn === this.#channel) this.#settle(deliveredOn, msg, 'ack');
      // Else the delivery died with its channel and will come back: it is then answered from the stored outcome.
      return 'sent';
    } catch (error) {
      if (held) return 'held';
      if (error instanceof CloudletError && error.code === 'MESSAGE_TOO_LARGE') return error;
      if ((error as Error).message === NACKED && deliveredOn === this.#channel) {
        // The broker took the reply and refused it (a reply queue that rejects publishes when full, say):
        // it would refuse it again, so the request is done. Its outcome is stored: asked again with the same
        // id, it is answered from there.
        this.#options.log.warn({ msgId: reply.id }, 'the broker refused the reply (nack); the request is acked, its outcome kept for a repeat');
        this.#settle(deliveredOn, msg, 'ack');
        return 'sent';
      }
      // Not confirmed: leave the request unacked (a redelivery is answered from the stored outcome), and send
      // the reply again on the next connection (#publishReply).
      this.#options.log.warn({ msgId: reply.id, reason: (error as Error).message }, 'reply not confirmed; sending it again once connected');
      // Usually the channel it came in on is closing, which brings it back. If that channel is fine (the
      // large-message channel failed, or the broker nacked), only a reconnect does. Checked a turn later:
      // a dropped connection fails the publish before it says it is down.
      setImmediate(() => {
        if (!this.#closing && deliveredOn === this.#channel && this.#connection?.isUp) this.#connection.restart('a reply was not confirmed while its request stayed unacked');
      });
      return 'unconfirmed';
    }
  }

  /**
   * Acks a delivery, or nacks it back to its queue or to the dead-letter exchange. amqplib throws at once on
   * a closed channel or a closing connection, which can still be the current one for a moment: the delivery
   * then died with it and comes back by itself, to be taken (or answered from its outcome) again.
   */
  #settle(channel: Channel, msg: ConsumeMessage, how: 'ack' | 'requeue' | 'dead-letter'): void {
    try {
      if (how === 'ack') channel.ack(msg);
      else channel.nack(msg, false, how === 'requeue');
    } catch (error) {
      this.#options.log.debug({ msgId: msg.properties.messageId, how, reason: (error as Error).message }, 'delivery not settled: its channel is gone, it comes back');
    }
  }

  /** Waits `ms`, or less if the transport closes meanwhile. */
  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#pauses.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#pauses.add(wake);
    });
  }

  /** Writes the outcome lines not written yet; a failure is logged (unless told not to) and thrown. */
  #writeOutcomes(logFailure = true): void {
    try {
      this.#store?.flush();
    } catch (error) {
      if (logFailure) this.#options.log.error({ err: error }, 'cannot write the outcome file: replies are held back until it can');
      throw error;
    }
  }

  /** Runs `use` on the live channel, waiting (bounded) for a reconnect if the broker or our channel is away. */
  async #withChannel<T>(use: (channel: ConfirmChannel) => Promise<T>): Promise<T> {
    const connection = this.#connection as BrokerConnection;
    const deadline = Date.now() + REPLY_RECONNECT_WAIT_MS;
    // Up without a channel: the broker closed ours, and restart() connects again after a pause.
    if (connection.isUp && !this.#channel) await connection.waitUntilUp(deadline, { next: true });
    if (!connection.isUp) await connection.waitUntilUp(deadline);
    const channel = this.#channel;
    if (!channel) throw cloudletError('BROKER_UNAVAILABLE', 'the broker connection dropped again');
    return use(channel);
  }

  /** Rejects, never throws: amqplib throws at once on a publish to a closed channel (or a closing connection). */
  async #publish(
    channel: ConfirmChannel,
    exchange: string,
    routingKey: string,
    envelope: ReplyEnvelope | ProgressEnvelope | EventEnvelope,
    correlationId?: string,
    confirm = true,
    headers?: Record<string, string>,
    /** The envelope as JSON, when the caller has it already. */
    encoded = encodeEnvelope(envelope),
  ): Promise<void> {
    const body = Buffer.from(encoded);
    const limit = this.#brokerLimit.bytes;
    if (limit !== undefined && body.length > limit) throw tooLargeForBroker(envelope.kind, body.length, limit);
    const options = { contentType: 'application/json', type: envelope.type, correlationId, headers };
    // Confirmed even when `confirm` is false, so that the caller can wait for it (see progressSent).
    if (body.length > LARGE_MESSAGE_BYTES) return this.#publishLarge(envelope.kind, exchange, routingKey, body, options);
    if (!confirm) {
      channel.publish(exchange, routingKey, body, options);
      return;
    }
    return publishConfirmed(channel, exchange, routingKey, body, options);
  }

  /**
   * A large message goes out on a channel of its own, so that a broker whose max_message_size is below it
   * closes that channel rather than the one the requests came in on: the requests stay in our hands (no
   * reconnect, no redelivery to another host that would run the handler again), and the refusal, read for
   * the broker's limit, becomes MESSAGE_TOO_LARGE for this message and any later one over the limit. A
   * message caught on that channel when another one closed it is sent again, once, on a new one.
   */
  async #publishLarge(kind: string, exchange: string, routingKey: string, body: Buffer, options: Options.Publish): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const channel = await this.#largeMessageChannel();
      try {
        return await publishConfirmed(channel, exchange, routingKey, body, options);
      } catch (error) {
        // The broker's 'error' (with its limit) comes before the 'close' that fails unconfirmed publishes.
        const limit = this.#brokerLimit.bytes;
        if (limit !== undefined && body.length > limit) throw tooLargeForBroker(kind, body.length, limit);
        if (attempt >= 2) throw error;
      }
    }
  }

  #largeMessageChannel(): Promise<ConfirmChannel> {
    // Not "is the connection up": setup itself sends the events kept while it was not (#flushEvents).
    const model = this.#model;
    if (!model) return Promise.reject(cloudletError('BROKER_UNAVAILABLE', 'not connected to the broker'));
    if (this.#largeChannel) return this.#largeChannel;
    const opening = model.createConfirmChannel().then((channel) => {
      channel.on('error', (error: Error) => {
        // Only this channel closes: nothing else needs to start again.
        if (!this.#brokerLimit.learn(error, false)) this.#options.log.warn({ reason: error.message }, 'broker closed the large-message channel');
      });
      channel.on('close', () => {
        if (this.#largeChannel === opening) this.#largeChannel = undefined;
      });
      return channel;
    });
    opening.catch(() => {
      if (this.#largeChannel === opening) this.#largeChannel = undefined;
    });
    this.#largeChannel = opening;
    return opening;
  }

  async stopAccepting(): Promise<void> {
    this.#accepting = false;
    // Its consumer is cancelled below, which deletes the queue: binding it again would close the channel.
    this.#bindings?.forget(this.names.broadcastQueue(this.#options.hostId));
    const channel = this.#channel as Channel | undefined;
    for (const tag of this.#consumerTags) await channel?.cancel(tag).catch(() => undefined);
    this.#consumerTags = [];
    // Tell the others right away that we no longer take work, rather than letting them time us out.
    this.#presence.publishHeartbeat();
  }

  async publishEvent(event: EventEnvelope): Promise<void> {
    const channel = this.#channel;
    if (!this.#connection?.isUp || !channel) {
      // Before the first connection (plugin init/start hooks) or during an outage: keep a bounded backlog.
      if (this.#pendingEvents.length >= MAX_PENDING_EVENTS) this.#pendingEvents.shift();
      this.#pendingEvents.push(event);
      return;
    }
    await this.#publish(channel, this.names.eventsExchange, event.type, event);
  }

  #flushEvents(channel: ConfirmChannel): void {
    for (const event of this.#pendingEvents.splice(0)) void this.#publish(channel, this.names.eventsExchange, event.type, event).catch(() => undefined);
  }

  async close(): Promise<void> {
    clearInterval(this.#heartbeatTimer);
    await this.#presence.farewell();
    this.#bindings?.close();
    // Held replies stop trying: their requests are unacked, and closing the channel puts them back.
    this.#closing = true;
    for (const wake of [...this.#pauses]) wake();
    // The connection first: its last write passes still flush outcome lines into an open file.
    await this.#connection?.close();
    try {
      this.#store?.close();
    } catch (error) {
      // Their replies were held back with them: the requests are redelivered and run again.
      this.#options.log.error({ err: error }, 'could not write the last outcome lines while closing');
    }
  }
}

function publishConfirmed(channel: ConfirmChannel, exchange: string, routingKey: string, body: Buffer, options: Options.Publish): Promise<void> {
  return new Promise((resolve, reject) => channel.publish(exchange, routingKey, body, options, (error) => (error ? reject(error) : resolve())));
}

function tooLargeForBroker(kind: string, size: number, limit: number): CloudletError {
  return cloudletError('MESSAGE_TOO_LARGE', `the ${kind} would be ${size} bytes; the broker refuses messages over ${limit} bytes (its max_message_size)`, {
    size,
    maxBytes: limit,
  });
}

function requestDeadline(content: Buffer): number | undefined {
  try {
    const deadline = (JSON.parse(content.toString('utf8')) as { deadline?: unknown }).deadline;
    return typeof deadline === 'number' ? deadline : undefined;
  } catch {
    return undefined;
  }
}

function parseJsonArray(value: unknown): string[] {
  if (typeof value !== 'string') return [];
  try {
    const parsed = JSON.parse(value) as unknown;
    return Array.isArray(parsed) ? parsed.filter((v): v is string => typeof v === 'string') : [];
  } catch {
    return [];
  }
}
