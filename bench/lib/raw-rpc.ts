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
  readonly #pending = new Map<string, () => void>();
  readonly #fail = new Map<string, (error: Error) => void>();
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
        const resolve = id === undefined ? undefined : this.#pending.get(id);
        if (!resolve || id === undefined) return;
        this.#pending.delete(id);
        if (this.#guaranteed) this.#fail.delete(id);
        resolve();
      },
      { noAck: true },
    );
    // A mandatory request the broker could not route comes back: fail its call rather than leave it waiting.
    this.#channel.on('return', (msg: { properties: { correlationId?: string } }) => {
      const id = msg.properties.correlationId;
      if (id !== undefined) this.#fail.get(id)?.(new Error('the broker returned the request: no queue took it'));
    });
  }

  /** Sends `body` to `queue` and resolves when the echo came back. */
  call(queue: string, body: Uint8Array): Promise<void> {
    const channel = this.#channel;
    if (!channel) throw new Error('RawRpcClient: open() first');
    const id = String(this.#nextId++);
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, resolve);
      const options = { correlationId: id, replyTo: REPLY_TO, contentType: 'application/json' };
      if (!this.#guaranteed) {
        // The plain baseline does the least a caller can: no failure bookkeeping either.
        channel.sendToQueue(queue, Buffer.from(body), options);
        return;
      }
      this.#fail.set(id, (error) => {
        this.#pending.delete(id);
        this.#fail.delete(id);
        reject(error);
      });
      // As cloudlet's client: the confirm is only used to fail the call; the reply is awaited either way.
      (channel as ConfirmChannel).sendToQueue(queue, Buffer.from(body), { ...options, messageId: id, persistent: true, mandatory: true }, (error: unknown) => {
        if (error) this.#fail.get(id)?.(new Error(`the broker did not accept the request: ${String(error)}`));
      });
    });
  }

  async close(): Promise<void> {
    await this.#connection?.close().catch(() => undefined);
  }
}
