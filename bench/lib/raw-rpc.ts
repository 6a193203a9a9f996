/**
 * The baselines' client: amqplib RPC with direct reply-to, TCP_NODELAY, one channel, correlation by id.
 * `guaranteed`: publishes as cloudlet's client does (persistent, mandatory, publisher-confirmed, with a
 * message id, each turn's frames in one socket write), for the baseline that keeps the agent's delivery
 * guarantees.
 */
import { Buffer } from 'node:buffer';
import amqplib, { type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { coalesceFrameWrites } from '../../core/transports/amqp/coalesce-writes.ts';

const REPLY_TO = 'amq.rabbitmq.reply-to';

export class RawRpcClient {
  /** Calls waiting for their replies, by correlation id; `remaining` counts the replies still due (a gather waits for several). */
  readonly #pending = new Map<string, { resolve: () => void; reject: (error: Error) => void; remaining: number }>();
  readonly #guaranteed: boolean;
  #connection: ChannelModel | undefined;
  #channel: Channel | undefined;
  #nextId = 0;

  constructor(options: { guaranteed?: boolean } = {}) {
    this.#guaranteed = options.guaranteed ?? false;
  }

  async open(url: string): Promise<void> {
    this.#connection = await amqplib.connect(url, { noDelay: true });
    if (this.#guaranteed && !coalesceFrameWrites(this.#connection)) throw new Error('coalesceFrameWrites: amqplib internals moved');
    this.#channel = this.#guaranteed ? await this.#connection.createConfirmChannel() : await this.#connection.createChannel();
    await this.#channel.consume(
      REPLY_TO,
      (msg) => {
        const id = msg?.properties.correlationId as string | undefined;
        const pending = id === undefined ? undefined : this.#pending.get(id);
        if (!pending || id === undefined) return;
        if (--pending.remaining > 0) return;
        this.#pending.delete(id);
        pending.resolve();
      },
      { noAck: true },
    );
    // A mandatory request the broker could not route comes back: fail its call rather than leave it waiting.
    this.#channel.on('return', (msg: { properties: { correlationId?: string } }) => {
      const id = msg.properties.correlationId;
      if (id !== undefined) this.#failCall(id, new Error('the broker returned the request: no queue took it'));
    });
  }

  /** Sends `body` to `queue` and resolves when the echo came back. */
  call(queue: string, body: Uint8Array): Promise<void> {
    const channel = this.#channel;
    if (!channel) throw new Error('RawRpcClient: open() first');
    const id = String(this.#nextId++);
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, remaining: 1 });
      const options = { correlationId: id, replyTo: REPLY_TO, contentType: 'application/json' };
      if (!this.#guaranteed) {
        channel.sendToQueue(queue, Buffer.from(body), options);
        return;
      }
      // As cloudlet's client: the confirm is only used to fail the call; the reply is awaited either way.
      (channel as ConfirmChannel).sendToQueue(queue, Buffer.from(body), { ...options, messageId: id, persistent: true, mandatory: true }, (error: unknown) => {
        if (error) this.#failCall(id, new Error(`the broker did not accept the request: ${String(error)}`));
      });
    });
  }

  /**
   * Publishes `body` once to a fanout `exchange` and resolves when `expected` replies have come back: the
   * least a broadcast-and-gather does (no registry of live hosts, no decoding of the replies). Rejects after
   * `timeoutMs` (as the agents' gather has a deadline), so a lost reply fails the benchmark instead of
   * hanging it.
   */
  gather(exchange: string, body: Uint8Array, expected: number, timeoutMs = 20_000): Promise<void> {
    const channel = this.#channel;
    if (!channel) throw new Error('RawRpcClient: open() first');
    if (this.#guaranteed) throw new Error('RawRpcClient: gather is measured without the guarantees (the floor)');
    const id = String(this.#nextId++);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const missing = this.#pending.get(id)?.remaining ?? 0;
        this.#failCall(id, new Error(`gather on ${exchange}: ${expected - missing} of ${expected} replies within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#pending.set(id, { resolve: done, reject, remaining: expected });
      channel.publish(exchange, '', Buffer.from(body), { correlationId: id, replyTo: REPLY_TO, contentType: 'application/json' });
    });
  }

  #failCall(id: string, error: Error): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    pending.reject(error);
  }

  async close(): Promise<void> {
    await this.#connection?.close().catch(() => undefined);
  }
}
