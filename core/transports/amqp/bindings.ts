/**
 * The queue bindings a participant made on its current channel, made again every `refreshMs`.
 *
 * The broker announces a deleted binding to nobody: an exchange deleted and declared again (an import of
 * broker definitions, a hand in the management UI) comes back with none of its bindings, and the queues
 * that were bound to it hear nothing from then on while their consumers look healthy. Binding again is
 * idempotent (an existing binding is found and left alone), so a lost binding is back within one interval,
 * without a reconnect. Binding to an exchange that is gone fails with 404, which closes the channel: the
 * participant's channel-error handling then connects again and declares it.
 *
 * Not free for the broker: a re-bind measured ~0.6 ms of its time (RabbitMQ 3.10, one node), and every host
 * has up to four bindings, so the default interval is long (a lost binding is rare; half a minute of it is
 * tolerable) and each interval is jittered, so that hosts that reconnected together do not re-bind together.
 */
import type { Channel } from 'amqplib';

/** Each interval is the configured one times a factor in [1 - JITTER, 1 + JITTER). */
const JITTER = 0.2;

interface Binding {
  queue: string;
  exchange: string;
  key: string;
}

export class BindingKeeper {
  #channel: Channel | undefined;
  readonly #bindings = new Map<string, Binding>();
  readonly #refreshMs: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  readonly #random: () => number;

  /** `random`: Math.random, or a stand-in in tests. */
  constructor(refreshMs: number, random: () => number = Math.random) {
    this.#refreshMs = refreshMs;
    this.#random = random;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(
      () => {
        this.#refresh();
        this.#schedule();
      },
      this.#refreshMs * (1 - JITTER + 2 * JITTER * this.#random()),
    );
    this.#timer.unref();
  }

  /** Binds `queue` on `channel` and keeps it bound. A new channel (a reconnect) starts a new list. */
  async bind(channel: Channel, queue: string, exchange: string, key: string): Promise<void> {
    await channel.bindQueue(queue, exchange, key);
    this.keep(channel, queue, exchange, key);
  }

  /** Keeps a binding already made on `channel` (by declareTopology, say). */
  keep(channel: Channel, queue: string, exchange: string, key: string): void {
    if (channel !== this.#channel) {
      this.#channel = channel;
      this.#bindings.clear();
    }
    this.#bindings.set(JSON.stringify([queue, exchange, key]), { queue, exchange, key });
  }

  /**
   * Stops keeping `queue`'s bindings. Call it before cancelling the last consumer of an auto-delete queue:
   * binding a deleted queue would close the channel.
   */
  forget(queue: string): void {
    for (const [id, binding] of this.#bindings) if (binding.queue === queue) this.#bindings.delete(id);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#bindings.clear();
    this.#channel = undefined;
  }

  #refresh(): void {
    const channel = this.#channel;
    if (!channel) return;
    for (const { queue, exchange, key } of this.#bindings.values()) {
      // A refusal closes the channel, which its owner hears through the channel's 'error' (see above); a
      // channel already closed refuses at once, and the next setup binds on its successor.
      Promise.resolve()
        .then(() => channel.bindQueue(queue, exchange, key))
        .catch(() => undefined);
    }
  }
}
