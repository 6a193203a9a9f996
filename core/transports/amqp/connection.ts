/**
 * A broker connection that comes back by itself. amqplib's recovery reconnects with backoff and runs
 * `setup` after every (re)connect, where the owner re-declares its topology and consumers. Between a drop
 * and the next setup the connection is "down", and callers are told so instead of waiting on a dead channel.
 */
import { EventEmitter } from 'node:events';
import amqplib, { type ChannelModel, type RecoveringChannelModel } from 'amqplib';
import type { Logger } from '../../logger.ts';
import { redactUrlCredentials } from '../../logger.ts';
import { CloudletError, cloudletError } from '../../errors.ts';
import { coalesceFrameWrites } from './coalesce-writes.ts';
import { explainConnectFailure } from './connect-failure.ts';

export interface BrokerConnectionOptions {
  url: string;
  log: Logger;
  /** Declares channels, topology and consumers on a fresh connection. */
  setup(model: ChannelModel): Promise<void>;
  /** Fail the first connect after this many retries (startup should not hang on a wrong URL). */
  initialMaxRetries?: number;
  /**
   * Longest pause between reconnect attempts. Keep it below the heartbeat interval: a host that is merely
   * reconnecting after a broker restart must be back before others decide it is down.
   */
  maxReconnectDelayMs?: number;
  /**
   * Runs right before each batch of frames is written to the socket (coalesce-writes.ts), while
   * `coalescesWrites` is true; a throw drops the connection instead of writing the batch.
   */
  beforeFrameWrite?: () => void;
  /**
   * False: write frame by frame, as amqplib does by itself; the path taken anyway when its internals differ
   * from what coalesce-writes.ts expects. Tests use it to exercise that path. Default true.
   */
  coalesceWrites?: boolean;
  /**
   * The AMQP heartbeat to ask for, in seconds, unless the URL says (`?heartbeat=N`). The broker drops a
   * connection that missed two: an agent whose network failed gets its exclusive queues back that much
   * sooner after it reconnects (RabbitMQ's own default, 60 s, kept them held for up to two minutes).
   */
  amqpHeartbeatSeconds?: number;
  /** Shown by the broker for this connection (`connection_name` in `rabbitmqctl list_connections client_properties`). */
  connectionName?: string;
}

/** `url` with `heartbeat=seconds` added, unless it has its own. */
export function withAmqpHeartbeat(url: string, seconds: number | undefined): string {
  if (seconds === undefined) return url;
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (!parsed || parsed.searchParams.has('heartbeat')) return url;
  parsed.searchParams.set('heartbeat', String(seconds));
  return parsed.href;
}

/** restart(): the first pause before dropping the connection, doubled for each restart in a row. */
const RESTART_FIRST_PAUSE_MS = 100;
/** A connection up this long without a restart counts as healthy: the next restart pauses briefly again. */
const RESTART_FORGIVEN_AFTER_MS = 30_000;

export class BrokerConnection extends EventEmitter {
  readonly #options: BrokerConnectionOptions;
  #model: RecoveringChannelModel | undefined;
  #up = false;
  #closing = false;
  #coalescing = false;
  /** The connection setup last ran on (amqplib's recovery makes a new one for each reconnect). */
  #current: ChannelModel | undefined;
  /** Restarts in a row (see restart()); when the last connection came up. */
  #restarts = 0;
  #upSince = 0;
  #restartTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: BrokerConnectionOptions) {
    super();
    this.#options = options;
    // Every request waiting out an outage listens for 'up' (and stops listening when it ends).
    this.setMaxListeners(0);
  }

  get isUp(): boolean {
    return this.#up;
  }

  /** Whether a setup has ever completed: a failing setup is then a reconnect's, not the first connect's. */
  get hasBeenUp(): boolean {
    return this.#upSince > 0;
  }

  /**
   * Whether the current connection writes each event-loop turn's frames in one go, after `beforeFrameWrite`
   * (coalesce-writes.ts).
   */
  get coalescesWrites(): boolean {
    return this.#coalescing;
  }

  describe(): string {
    return redactUrlCredentials(this.#options.url);
  }

  async open(): Promise<void> {
    const { url, log } = this.#options;
    let model: RecoveringChannelModel;
    try {
      model = await amqplib.connect(withAmqpHeartbeat(url, this.#options.amqpHeartbeatSeconds), {
        // Without TCP_NODELAY a request/reply on loopback takes ~15 ms instead of <1 ms (Nagle + delayed ACK).
        noDelay: true,
        ...(this.#options.connectionName === undefined ? {} : { clientProperties: { connection_name: this.#options.connectionName } }),
        recovery: {
          initialDelay: 100,
          maxDelay: this.#options.maxReconnectDelayMs ?? 2_000,
          initialMaxRetries: this.#options.initialMaxRetries ?? 3,
          setup: async (model: ChannelModel) => {
            // Closed meanwhile: open() closes this connection as soon as amqplib hands it over.
            if (this.#closing) return;
            // amqplib's recovery listens for the model's errors only once setup is done: an error before
            // that (the broker going away, or beforeFrameWrite failing and the socket being dropped)
            // would be an uncaught exception. It fails the setup instead, and recovery tries again.
            model.on('error', (error: Error) => this.#options.log.debug({ reason: error.message }, 'broker connection error during setup'));
            this.#coalescing = this.#options.coalesceWrites !== false && coalesceFrameWrites(model, this.#options.beforeFrameWrite);
            if (!this.#coalescing && this.#options.coalesceWrites !== false) {
              this.#options.log.debug('amqplib internals differ from what coalesce-writes.ts expects: frames are written one by one');
            }
            await this.#options.setup(model);
            this.#current = model;
            this.#upSince = Date.now();
            this.#up = true;
            this.emit('up');
          },
        },
      });
    } catch (cause) {
      // The owner's setup refused this broker for a reason of its own (another agent has this host id).
      if (cause instanceof CloudletError && cause.code === 'AGENT_ALREADY_RUNNING') throw cause;
      const message = redactUrlCredentials(String((cause as Error)?.message ?? cause));
      const known = explainConnectFailure(cause, message, this.describe());
      if (known) throw cloudletError('BROKER_UNAVAILABLE', `cannot connect to the broker: ${known.reason}`, { hint: known.fix }, cause);
      throw cloudletError('BROKER_UNAVAILABLE', `cannot connect to the broker at ${this.describe()}: ${message}`, undefined, cause);
    }
    if (this.#closing) {
      await model.close().catch(() => undefined);
      throw cloudletError('BROKER_UNAVAILABLE', `the connection to the broker at ${this.describe()} was closed while it was being opened`);
    }
    this.#model = model;
    model.on('disconnect', (error: Error) => {
      this.#up = false;
      if (!this.#closing) log.warn({ code: 'BROKER_UNAVAILABLE', reason: error?.message }, `lost the broker at ${this.describe()}; reconnecting`);
      this.emit('down');
    });
    model.on('connect', () => log.info({ broker: this.describe() }, 'connected to the broker'));
    model.on('reconnect-failed', (error: Error) => log.error({ err: error }, 'gave up reconnecting to the broker'));
    // amqplib re-emits channel and connection errors here; they are handled by recovery, never fatal.
    model.on('error', (error: Error) => log.debug({ reason: error.message }, 'broker connection error'));
  }

  /**
   * Drops the current connection so that recovery connects again and runs setup anew. For what the broker
   * takes away while the connection itself stays up — a channel it closed with an error, a consumer it
   * cancelled because its queue was deleted — which nothing else would bring back. Once per connection.
   */
  restart(reason: string): void {
    const model = this.#current;
    if (!model || !this.#up || this.#closing) return;
    this.#current = undefined;
    // amqplib's recovery starts its backoff afresh after every successful connect, so a cause that comes
    // back right after setup would make it reconnect ten times a second. The pause grows here instead,
    // and starts again only after a connection that stayed up for a while.
    if (Date.now() - this.#upSince > RESTART_FORGIVEN_AFTER_MS) this.#restarts = 0;
    const pauseMs = Math.min(RESTART_FIRST_PAUSE_MS * 2 ** this.#restarts, this.#options.maxReconnectDelayMs ?? 2_000);
    this.#restarts++;
    this.#options.log.warn({ reason, pauseMs }, `${reason}: connecting to the broker again`);
    // Closing the connection setup ran on (not the recovering wrapper) is a disconnect to amqplib's
    // recovery, which then reconnects.
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      void Promise.resolve()
        .then(() => model.close())
        .catch(() => undefined);
    }, pauseMs);
  }

  /**
   * Resolves when the connection is (again) up — with `next`, only when it next comes up, for a caller that
   * knows the current connection is no use (the broker closed our channel). Rejects with BROKER_UNAVAILABLE
   * at the deadline, or at once when the connection is closed: nothing would bring it back, and a wait left
   * to its deadline would keep the process alive that long.
   */
  waitUntilUp(deadline: number, { next = false }: { next?: boolean } = {}): Promise<void> {
    if (this.#closing) return Promise.reject(this.#closedError());
    if (this.#up && !next) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const settle = (error?: Error) => {
        clearTimeout(timer);
        this.off('up', onUp);
        this.off('closed', onClosed);
        if (error) reject(error);
        else resolve();
      };
      const onUp = () => settle();
      const onClosed = () => settle(this.#closedError());
      const timer = setTimeout(
        () => settle(cloudletError('BROKER_UNAVAILABLE', `the broker at ${this.describe()} is unavailable (reconnecting); gave up at the deadline`)),
        Math.max(0, deadline - Date.now()),
      );
      this.on('up', onUp);
      this.on('closed', onClosed);
    });
  }

  #closedError() {
    return cloudletError('BROKER_UNAVAILABLE', `the connection to the broker at ${this.describe()} was closed`);
  }

  async close(): Promise<void> {
    this.#closing = true;
    clearTimeout(this.#restartTimer);
    this.#up = false;
    this.emit('closed');
    // A first connect still under way is not waited for (against a broker that does not answer it can take
    // long): it closes what it opened itself once it sees #closing.
    await this.#model?.close().catch(() => undefined);
  }
}
