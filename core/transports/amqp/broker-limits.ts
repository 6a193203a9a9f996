/**
 * The broker's own message size limit (RabbitMQ's `max_message_size`), learned from its refusal.
 *
 * AMQP does not tell a client the limit. A publish over it makes RabbitMQ close the channel with 406
 * PRECONDITION_FAILED, and the participant's recovery (connect again, publish again what is unanswered)
 * would then meet the same refusal on every try. Read from the refusal, the limit lets the next try answer
 * MESSAGE_TOO_LARGE instead.
 */

/** RabbitMQ 3.8+: "message size 70000 is larger than configured max size 65536" ("max size" at its ceiling). */
const REFUSAL = /message size (\d+) is larger than (?:configured )?max size (\d+)/;

/** The limit named by a channel's closing error, when the broker closed it over a message's size. */
export function brokerMaxMessageBytes(error: unknown): number | undefined {
  const match = REFUSAL.exec(error instanceof Error ? error.message : String(error));
  return match ? Number(match[2]) : undefined;
}

/** What to tell the operator, once, when the broker's limit is below cloudlet's. */
export function brokerLimitAdvice(brokerMaxBytes: number, configuredMaxBytes: number): string {
  return (
    `the broker refuses messages over ${brokerMaxBytes} bytes (its max_message_size), less than limits.maxMessageBytes (${configuredMaxBytes}): ` +
    `larger messages are answered MESSAGE_TOO_LARGE from now on. Set limits.maxMessageBytes to at most ${brokerMaxBytes} on every host and client, or raise the broker's max_message_size`
  );
}
