/**
 * The RabbitMQ side: this plugin's own connection (the core's transport config is not visible to plugins,
 * and a host on the local transport has none), the original topology, consumers, replies and acks.
 * amqplib's recovery reconnects with backoff and runs `setup` again, which re-declares everything.
 */
import { Buffer } from 'node:buffer';
import amqplib, { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type RecoveringChannelModel } from 'amqplib';
import type { PluginLogger } from '../../core/plugin-api.ts';
import { runCommand, type CommandContext, type Dispatch, type Outcome } from './commands.ts';
import { handOnDecision, HAND_ON_HEADERS, type Refusal } from './hand-on.ts';
import type { AetherscaleOptions } from './options.ts';
import { failure, PER_HOST_COMMANDS, type AetherscaleReply, type Route } from './wire.ts';

export interface BridgeOptions {
  url: string;
  host: string;
  options: AetherscaleOptions;
  dispatch: Dispatch;
  log: PluginLogger;
}

/** A queue or exchange declared with other settings than ours (e.g. by the original servers). */
const PRECONDITION_FAILED = 406;

export function maskCredentials(url: string): string {
  // To the last "@" before the host, as URL parsers read it: `amqp://u:p@ss@h` has the password "p@ss".
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:@/]*):[^/]*@/i, '$1:***@');
}

export class AetherscaleBridge {
  readonly #options: BridgeOptions;
  #model: RecoveringChannelModel | undefined;
  /** The raw connection of the current setup; closing it makes recovery start over with a fresh setup. */
  #current: ChannelModel | undefined;
  #consumers: { channel: Channel; tag: string }[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  #accepting = true;
  #stopping = false;

  constructor(options: BridgeOptions) {
    this.#options = options;
  }

  get broker(): string {
    return maskCredentials(this.#options.url);
  }

  async start(): Promise<void> {
    const { log } = this.#options;
    try {
      this.#model = await amqplib.connect(this.#options.url, {
        // Without TCP_NODELAY each reply waits for Nagle + delayed ACK on loopback.
        noDelay: true,
        recovery: { initialDelay: 100, maxDelay: 5_000, initialMaxRetries: 3, setup: (model: ChannelModel) => this.#setup(model) },
      });
    } catch (error) {
      throw new Error(`cannot connect to the broker at ${this.broker}: ${maskCredentials((error as Error).message)}`, { cause: error });
    }
    this.#model.on('disconnect', (error: Error) => {
      if (!this.#stopping) log.warn({ code: 'BROKER_UNAVAILABLE', reason: maskCredentials(error?.message ?? '') }, `lost the broker at ${this.broker}; reconnecting`);
    });
    this.#model.on('connect', () => log.info({ broker: this.broker }, 'aetherscale: connected to the broker'));
    this.#model.on('reconnect-failed', (error: Error) => log.error({ reason: maskCredentials(error.message) }, 'aetherscale: gave up reconnecting to the broker'));
    this.#model.on('error', (error: Error) => log.debug({ reason: maskCredentials(error.message) }, 'aetherscale: broker connection error'));
  }

  /** Runs on every (re)connect. */
  async #setup(model: ChannelModel): Promise<void> {
    const { options, log } = this.#options;
    this.#current = model;
    model.once('close', () => {
      if (this.#current === model) this.#current = undefined;
    });
    // Stopping: a reconnect now must not declare the shared queue again (a test may just have deleted it).
    if (!this.#accepting) return;
    await this.#declare(model, 'exchange', options.exchange, (ch) =>
      // Not durable, as the original declared it: a durable declaration would fail against its servers'.
      ch.assertExchange(options.exchange, 'direct', { durable: false }),
    );
    await this.#declare(model, 'queue', options.competingQueue, (ch) =>
      // Durable: RabbitMQ 4 refuses transient queues that are not exclusive.
      ch.assertQueue(options.competingQueue, { durable: true }),
    );
    const perHost = await this.#channel(model, options.prefetch);
    const { queue } = await perHost.assertQueue('', { exclusive: true, autoDelete: true });
    for (const command of PER_HOST_COMMANDS) await perHost.bindQueue(queue, options.exchange, command);
    const competing = await this.#channel(model, 1);
    await competing.bindQueue(options.competingQueue, options.exchange, 'create-vm');
    this.#consumers = [];
    // Prefetch 1 on the shared queue: a host takes the next create only when done with one, so creates
    // spread over the hosts instead of piling up on the first to connect.
    this.#consumers.push({ channel: perHost, tag: (await perHost.consume(queue, (msg) => this.#onDelivery(perHost, msg, 'per-host'))).consumerTag });
    this.#consumers.push({
      channel: competing,
      tag: (await competing.consume(options.competingQueue, (msg) => this.#onDelivery(competing, msg, 'competing'))).consumerTag,
    });
    // The agent began to stop while this setup ran.
    if (!this.#accepting) return this.#cancelConsumers();
    log.info({ broker: this.broker, exchange: options.exchange, competingQueue: options.competingQueue, perHostQueue: queue }, 'aetherscale: taking requests');
  }

  /** Declares, or, when it exists with other settings, uses what is there as it is. */
  async #declare(model: ChannelModel, kind: 'exchange' | 'queue', name: string, declare: (channel: Channel) => Promise<unknown>): Promise<void> {
    const channel = await model.createChannel();
    channel.on('error', () => undefined); // a refused declaration closes the channel; that is handled below
    try {
      await declare(channel);
      await channel.close();
    } catch (error) {
      if ((error as { code?: number }).code !== PRECONDITION_FAILED) throw error;
      this.#options.log.warn({ [kind]: name, reason: (error as Error).message }, `aetherscale: the ${kind} exists with other settings; using it as it is`);
      const check = await model.createChannel();
      await (kind === 'exchange' ? check.checkExchange(name) : check.checkQueue(name));
      await check.close();
    }
  }

  async #channel(model: ChannelModel, prefetch: number): Promise<ConfirmChannel> {
    const channel = await model.createConfirmChannel();
    await channel.prefetch(prefetch);
    channel.on('error', (error: Error) => this.#options.log.warn({ reason: error.message }, 'aetherscale: broker channel error'));
    // A channel closed under a live connection (e.g. the competing queue was deleted) would leave this host
    // deaf: start the connection over, so setup declares and consumes again.
    // (Checked a turn later: when the whole connection drops, its channels close just before it does.)
    channel.on('close', () => setTimeout(() => this.#restart(model, 'a channel closed'), 0));
    return channel;
  }

  #restart(model: ChannelModel, why: string): void {
    if (this.#stopping || model !== this.#current) return;
    this.#options.log.warn({ why }, 'aetherscale: reconnecting to set up the consumers again');
    this.#current = undefined;
    void model.close().catch(() => undefined);
  }

  #onDelivery(channel: ConfirmChannel, msg: ConsumeMessage | null, route: Route): void {
    if (msg === null) {
      // RabbitMQ cancels a consumer whose queue was deleted.
      if (this.#current) this.#restart(this.#current, `the broker cancelled the ${route} consumer`);
      return;
    }
    const work = this.#handle(channel, msg, route)
      .catch((error: unknown) => this.#options.log.error({ err: error, route }, 'aetherscale: a request failed unexpectedly; it stays unacked and comes back'))
      .finally(() => this.#inFlight.delete(work));
    this.#inFlight.add(work);
  }

  async #handle(channel: ConfirmChannel, msg: ConsumeMessage, route: Route): Promise<void> {
    const { host, options, dispatch, log } = this.#options;
    const started = Date.now();
    const replyTo = msg.properties.replyTo as string | undefined;
    let replies = 0;
    const context: CommandContext = {
      host,
      options,
      dispatch,
      log,
      reply: async (body) => {
        replies += 1;
        if (replyTo) await this.#publishReply(channel, replyTo, msg.properties.correlationId as string | undefined, body);
      },
    };
    let outcome: Outcome;
    try {
      outcome = await runCommand(msg.content, route, context);
    } catch (error) {
      // Never leave a request unacked on a live channel (it would hold a prefetch slot for good): say what
      // happened and settle it. When the channel itself is gone, the broker gives the request out again.
      log.error({ err: error, route }, 'aetherscale: a request failed unexpectedly');
      if (replies === 0) await context.reply(failure(`the host failed while handling the request: ${(error as Error).message}`));
      outcome = { kind: 'answered' };
    }
    if (!replyTo && outcome.kind === 'answered') log.info({ route }, 'aetherscale: request without reply_to; its replies went nowhere');
    const settled = await this.#settle(channel, msg, outcome, context);
    log.debug(
      { route, command: 'command' in outcome ? outcome.command : undefined, outcome: outcome.kind, replies, settled, deliveryTag: msg.fields.deliveryTag, elapsedMs: Date.now() - started },
      `aetherscale request ${settled}`,
    );
  }

  /** Acks, except a create-vm that a host shutting down gives back to the queue for the others. */
  async #settle(channel: ConfirmChannel, msg: ConsumeMessage, outcome: Outcome, context: CommandContext): Promise<'acked' | 'requeued' | 'handed on'> {
    if (outcome.kind !== 'elsewhere') {
      channel.ack(msg);
      return 'acked';
    }
    if (outcome.code === 'SHUTTING_DOWN') {
      await this.#pause();
      channel.nack(msg, false, true);
      return 'requeued';
    }
    let handed = false;
    try {
      handed = await this.#handOn(channel, msg, { ...outcome, code: outcome.code }, context);
    } catch (error) {
      // Passing it on failed (the broker refused the copy, or it could not be written): the request must still
      // be settled, or it holds this host's one prefetch slot and no create-vm reaches it again. Its caller
      // gets this host's refusal.
      this.#options.log.warn({ err: error, code: outcome.code }, 'aetherscale create-vm: could not hand it on to another host; answering with the refusal');
      await context.reply(failure(`${outcome.reason} (it could not be passed on to another host: ${(error as Error).message})`)).catch(() => undefined);
    }
    channel.ack(msg);
    return handed ? 'handed on' : 'acked';
  }

  /** Passes a create-vm this host cannot take to the next host, until every consumer of the shared queue refused it. */
  async #handOn(channel: ConfirmChannel, msg: ConsumeMessage, refusal: Refusal, context: CommandContext): Promise<boolean> {
    const { options, host, log } = this.#options;
    const { consumerCount } = await channel.checkQueue(options.competingQueue);
    const decision = handOnDecision(msg.properties.headers, host, consumerCount, refusal);
    if (decision.kind === 'answer') {
      // A reply that fails here is not a failed hand-on: the caller must not get a second, other answer.
      await context.reply(failure(decision.reason)).catch((error: unknown) => log.warn({ err: error }, 'aetherscale create-vm: the refusal could not be sent'));
      return false;
    }
    const { properties } = msg;
    // Only our own headers travel on: a client's (an unencodable timestamp, a huge table) must not make the
    // copy unsendable.
    const headers = {
      [HAND_ON_HEADERS.refusedBy]: JSON.stringify(decision.refusedBy),
      [HAND_ON_HEADERS.full]: JSON.stringify(decision.full),
      [HAND_ON_HEADERS.hops]: decision.hops,
      [HAND_ON_HEADERS.since]: decision.since,
      ...(decision.images.length > 0 ? { [HAND_ON_HEADERS.images]: JSON.stringify(decision.images) } : {}),
    };
    await new Promise<void>((resolve, reject) =>
      channel.publish(
        '',
        options.competingQueue,
        msg.content,
        {
          contentType: properties.contentType,
          contentEncoding: properties.contentEncoding,
          correlationId: properties.correlationId,
          replyTo: properties.replyTo,
          messageId: properties.messageId,
          type: properties.type,
          appId: properties.appId,
          persistent: true,
          headers,
        },
        (error) => (error ? reject(error) : resolve()),
      ),
    );
    // Refused here before: the others have not had their turn yet. Wait before the ack, holding this host's
    // one prefetch slot, so that the copy goes to another host (one that frees its slot meanwhile) rather
    // than straight back here; two full hosts pausing at once each get the other's copy afterwards.
    if (decision.pause) await new Promise((resolve) => setTimeout(resolve, 250));
    log.info({ code: refusal.code, refusedBy: decision.refusedBy, consumers: consumerCount }, 'aetherscale create-vm: cannot take it here; handed on to another host');
    return true;
  }

  #publishReply(channel: ConfirmChannel, replyTo: string, correlationId: string | undefined, body: AetherscaleReply): Promise<void> {
    return new Promise((resolve, reject) =>
      channel.publish('', replyTo, Buffer.from(JSON.stringify(body)), { contentType: 'application/json', ...(correlationId ? { correlationId } : {}) }, (error) =>
        error ? reject(error) : resolve(),
      ),
    );
  }

  /** Takes no new requests (this connection's setups neither); unacked ones finish. */
  async #pause(): Promise<void> {
    if (!this.#accepting) return;
    this.#accepting = false;
    await this.#cancelConsumers();
  }

  async #cancelConsumers(): Promise<void> {
    const consumers = this.#consumers.splice(0);
    await Promise.all(consumers.map(({ channel, tag }) => channel.cancel(tag).catch(() => undefined)));
  }

  async stop(graceMs: number): Promise<void> {
    await this.#pause();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([Promise.allSettled([...this.#inFlight]), new Promise((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    this.#stopping = true;
    await this.#model?.close().catch(() => undefined);
  }
}
