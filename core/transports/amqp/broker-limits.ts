/**
 * The broker's own message size limit (RabbitMQ's `max_message_size`), learned from its refusal.
 *
 * AMQP does not tell a client the limit. A publish over it makes RabbitMQ close the channel with 406
 * PRECONDITION_FAILED, and the participant's recovery (connect again, publish again what is unanswered)
 * would then meet the same refusal on every try. Read from the refusal, the limit lets the next try answer
 * MESSAGE_TOO_LARGE instead.
 */
import type { Logger } from '../../logger.ts';

/** RabbitMQ 3.8+: "message size 70000 is larger than configured max size 65536" ("max size" at its ceiling). */
const REFUSAL = /message size (\d+) is larger than (?:configured )?max size (\d+)/;

/** The limit named by a channel's closing error, when the broker closed it over a message's size. */
export function brokerMaxMessageBytes(error: unknown): number | undefined {
  const match = REFUSAL.exec(error instanceof Error ? error.message : String(error));
  return match ? Number(match[2]) : undefined;
}

/**
 * The limit as one participant (agent or client) knows it: learned from a refusal, kept for the connection
 * it was learned on, and forgotten when a new one is made (the broker may have come back with another),
 * unless the refusal is what made the participant reconnect: then the new connection keeps it, or what was
 * refused would be sent again into the same refusal.
 */
export class LearnedBrokerLimit {
  readonly #log: Pick<Logger, 'error'>;
  readonly #configuredBytes: number;
  #bytes: number | undefined;
  #carriesOver = false;

  constructor(log: Pick<Logger, 'error'>, configuredBytes: number) {
    this.#log = log;
    this.#configuredBytes = configuredBytes;
  }

  /** The broker's limit, if it has refused a message on this connection. */
  get bytes(): number | undefined {
    return this.#bytes;
  }

  /**
   * Reads the limit from a channel's closing error (telling the operator the first time) and says whether
   * it was a size refusal. `reconnecting`: this refusal makes the participant connect again.
   */
  learn(error: unknown, reconnecting: boolean): boolean {
    const limit = brokerMaxMessageBytes(error);
    if (limit === undefined) return false;
    if (limit !== this.#bytes) this.#log.error({ brokerMaxBytes: limit, maxMessageBytes: this.#configuredBytes }, brokerLimitAdvice(limit, this.#configuredBytes));
    this.#bytes = limit;
    if (reconnecting) this.#carriesOver = true;
    return true;
  }

  /** A new connection is set up. */
  connected(): void {
    if (!this.#carriesOver) this.#bytes = undefined;
    this.#carriesOver = false;
  }
}

/** What to tell the operator, once, when the broker's limit is below cloudlet's. */
export function brokerLimitAdvice(brokerMaxBytes: number, configuredMaxBytes: number): string {
  return (
    `the broker refuses messages over ${brokerMaxBytes} bytes (its max_message_size), less than limits.maxMessageBytes (${configuredMaxBytes}): ` +
    `larger messages are answered MESSAGE_TOO_LARGE from now on. Set limits.maxMessageBytes to at most ${brokerMaxBytes} on every host and client, or raise the broker's max_message_size`
  );
}
