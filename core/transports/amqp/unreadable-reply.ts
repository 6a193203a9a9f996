/**
 * What a message on the client's reply address still tells when it cannot be decoded (over the client's
 * own limits.maxMessageBytes, or not a valid reply): whose request it answers and which host sent it. With
 * that the request fails at once with the reason instead of waiting for its timeout, and a gather counts
 * the host as having answered (with an error) rather than as missing.
 */
import { Buffer } from 'node:buffer';
import { CloudletError, cloudletError } from '../../errors.ts';
import { hostIdSchema, messageIdSchema, type DecodeFailure } from '../../envelope.ts';
import { salvageIds, topLevelString } from '../ndjson.ts';

export interface UnreadableReply {
  /** The request it answers: the envelope's id if it can be read, else the AMQP correlation id. */
  id: string | undefined;
  /** The sender, when the envelope names it where it can be read. */
  host: string | undefined;
  /** The envelope's kind when it can be read: a progress message is dropped, not taken for an answer. */
  kind: string | undefined;
  error: CloudletError;
}

/**
 * An oversize body is not parsed (the limit is there so that it need not be): its first bytes are, where
 * cloudlet agents put `id` and `host` (they come before `result` or `error`).
 */
const HEAD_BYTES = 1024;

export function describeUnreadableReply(body: Buffer, failure: DecodeFailure, correlationId: unknown, maxBytes: number): UnreadableReply {
  const correlated = messageIdSchema.safeParse(correlationId).success ? (correlationId as string) : undefined;
  if (failure.error.code === 'MESSAGE_TOO_LARGE') {
    const head = body.subarray(0, HEAD_BYTES);
    const salvaged = salvageIds(head);
    const host = validHost(topLevelString(head.toString('utf8'), 'host'));
    const from = host === undefined ? '' : ` from "${host}"`;
    const error = cloudletError('MESSAGE_TOO_LARGE', `the reply${from} is ${body.length} bytes; this client's limit is ${maxBytes} (limits.maxMessageBytes)`, {
      size: body.length,
      maxBytes,
    });
    return { id: salvaged.id ?? correlated, host, kind: salvaged.kind, error };
  }
  // Within the limit, so parsing it again for the fields decodeEnvelope does not hand back is cheap.
  let record: Record<string, unknown> = {};
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) record = value as Record<string, unknown>;
  } catch {
    // not JSON: nothing more to learn than the correlation id
  }
  const host = validHost(record.host);
  const from = host === undefined ? '' : ` from "${host}"`;
  const { code, message, details } = failure.error;
  const error = new CloudletError(code, `the reply${from} could not be read: ${message}`, { details, cause: failure.error });
  return { id: failure.id ?? correlated, host, kind: typeof record.kind === 'string' ? record.kind : undefined, error };
}

function validHost(value: unknown): string | undefined {
  return hostIdSchema.safeParse(value).success ? (value as string) : undefined;
}
