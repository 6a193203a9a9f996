/**
 * The queue bindings a participant made on its current channel, made again every `refreshMs`.
 *
 * The broker announces a deleted binding to nobody: an exchange deleted and declared again (an import of
 * broker definitions, a hand in the management UI) comes back with none of its bindings, and the queues
 * that were bound to it hear nothing from then on while their consumers look healthy. Binding again is
 * idempotent and cheap for the broker (an existing binding is found and left alone), so a lost binding is
 * back within one interval, without a reconnect. Binding to an exchange that is gone fails with 404, which
 * closes the channel: the participant's channel-error handling then connects again and declares it.
 */
import type { Channel } from 'amqplib';
import type { AmqpTransportConfig } from '../../config/schema.ts';

/** Heartbeat intervals between two refreshes when `bindingRefreshMs` is not configured. */
const DEFAULT_REFRESH_HEARTBEATS = 5;

export function bindingRefreshMs(config: Pick<AmqpTransportConfig, 'heartbeatMs' | 'bindingRefreshMs'>): number {
  return config.bindingRefreshMs ?? DEFAULT_REFRESH_HEARTBEATS * config.heartbeatMs;
}

interface Binding {
  queue: string;
  exchange: string;
  key: string;
}

export class BindingKeeper {
  #channel: Channel | undefined;
  readonly #bindings = new Map<string, Binding>();
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(refreshMs: number) {
    this.#timer = setInterval(() => this.#refresh(), refreshMs);
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
    clearInterval(this.#timer);
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
