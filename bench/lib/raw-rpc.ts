/** The baseline's client: amqplib RPC with direct reply-to, TCP_NODELAY, one channel, correlation by id. */
import { Buffer } from 'node:buffer';
import amqplib, { type Channel, type ChannelModel } from 'amqplib';

const REPLY_TO = 'amq.rabbitmq.reply-to';

export class RawRpcClient {
  readonly #pending = new Map<string, () => void>();
  #connection: ChannelModel | undefined;
  #channel: Channel | undefined;
  #nextId = 0;

  async open(url: string): Promise<void> {
    this.#connection = await amqplib.connect(url, { noDelay: true });
    this.#channel = await this.#connection.createChannel();
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
    return new Promise<void>((resolve) => {
      this.#pending.set(id, resolve);
      channel.sendToQueue(queue, Buffer.from(body), { correlationId: id, replyTo: REPLY_TO, contentType: 'application/json' });
    });
  }

  async close(): Promise<void> {
    await this.#connection?.close().catch(() => undefined);
  }
}
