/**
 * The baselines' client: amqplib RPC with direct reply-to, TCP_NODELAY, one channel, correlation by id.
 * `guaranteed`: publishes as cloudlet's client does (persistent, mandatory, publisher-confirmed, with a
 * message id), for the baseline that keeps the agent's delivery guarantees.
 */
import { Buffer } from 'node:buffer';
import amqplib, { type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';

const REPLY_TO = 'amq.rabbitmq.reply-to';

export class RawRpcClient {
  readonly #pending = new Map<string, () => void>();
  readonly #guaranteed: boolean;
  #connection: ChannelModel | undefined;
  #channel: Channel | undefined;
  #nextId = 0;

  constructor(options: { guaranteed?: boolean } = {}) {
    this.#guaranteed = options.guaranteed ?? false;
  }

  async open(url: string): Promise<void> {
    this.#connection = await amqplib.connect(url, { noDelay: true });
    this.#channel = this.#guaranteed ? await this.#connection.createConfirmChannel() : await this.#connection.createChannel();
    await this.#channel.consume(
      REPLY_TO,
      (msg) => {
        const id = msg?.properties.correlationId as string | undefined;
        const resolve = id === undefined ? undefined : this.#pending.get(id);
        if (!resolve || id === undefined) return;
        this.#pending.delete(id);
        resolve();
      },
      { noAck: true },
    );
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
        channel.sendToQueue(queue, Buffer.from(body), options);
        return;
      }
      // As cloudlet's client: the confirm is only used to fail the call; the reply is awaited either way.
      (channel as ConfirmChannel).sendToQueue(queue, Buffer.from(body), { ...options, messageId: id, persistent: true, mandatory: true }, (error: unknown) => {
        if (error) reject(new Error(`the broker did not accept the request: ${String(error)}`));
      });
    });
  }

  async close(): Promise<void> {
    await this.#connection?.close().catch(() => undefined);
  }
}
