/**
 * The one envelope every request, reply, progress update and event travels in, on every transport.
 * `docs/PROTOCOL.md` is the language-neutral description of these schemas; keep both in step.
 */
import { Buffer } from 'node:buffer';
import { z } from 'zod';
import { CloudletError, cloudletError, type WireError } from './errors.ts';
import { PROTOCOL_VERSION } from './version.ts';

export const MESSAGE_TYPE_PATTERN = /^[a-z][a-z0-9]*(?:[.-][a-z0-9]+)*$/;
export const HOST_ID_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export const messageIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces, 1–128 characters');
export const messageTypeSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(MESSAGE_TYPE_PATTERN, 'lowercase words joined by "-" or ".", e.g. "create-vm", at most 64 characters');
export const hostIdSchema = z
  .string()
  .regex(HOST_ID_PATTERN, 'lowercase letters, digits and "-", 1–63 characters, not starting or ending with "-"');

const MAX_ERROR_MESSAGE = 4096;

export const wireErrorSchema = z.object({
  code: z.string().min(1).max(64),
  message: z.string().max(MAX_ERROR_MESSAGE),
  retryable: z.boolean().optional(),
  details: z.unknown().optional(),
});

const base = { v: z.literal(PROTOCOL_VERSION) };

/** An Ed25519 signature over the envelope (see core/security/envelope-auth.ts and docs/PROTOCOL.md). */
export const authSchema = z
  .object({
    /** Key id: the first 16 hex digits of the SHA-256 of the signer's public key. */
    key: z.string().regex(/^[0-9a-f]{16}$/, '16 lowercase hex digits'),
    sig: z.string().max(200),
  })
  .strict();

export const requestSchema = z.object({
  ...base,
  kind: z.literal('request'),
  id: messageIdSchema,
  type: messageTypeSchema,
  /** Host that must handle the request; absent means "whichever host the routing picks". */
  target: hostIdSchema.optional(),
  /** Absolute deadline, milliseconds since the Unix epoch. */
  deadline: z.number().int().positive().optional(),
  payload: z.unknown().optional(),
  auth: authSchema.optional(),
});

export const replySchema = z
  .object({
    ...base,
    kind: z.literal('reply'),
    /** The request's id; null only when the request was too broken to have one. */
    id: messageIdSchema.nullable(),
    type: messageTypeSchema.optional(),
    host: hostIdSchema,
    ok: z.boolean(),
    result: z.unknown().optional(),
    error: wireErrorSchema.optional(),
    auth: authSchema.optional(),
  })
  .refine((reply) => reply.ok === (reply.error === undefined), {
    message: 'a reply has "error" exactly when "ok" is false',
  });

export const progressSchema = z.object({
  ...base,
  kind: z.literal('progress'),
  id: messageIdSchema,
  type: messageTypeSchema,
  host: hostIdSchema,
  stage: z.string().min(1).max(64),
  detail: z.record(z.string(), z.unknown()).optional(),
});

export const eventSchema = z.object({
  ...base,
  kind: z.literal('event'),
  id: messageIdSchema,
  type: messageTypeSchema,
  host: hostIdSchema,
  time: z.number().int().positive(),
  payload: z.unknown().optional(),
});

export type RequestEnvelope = z.infer<typeof requestSchema>;
export type ReplyEnvelope = z.infer<typeof replySchema>;
export type ProgressEnvelope = z.infer<typeof progressSchema>;
export type EventEnvelope = z.infer<typeof eventSchema>;
export type Envelope = RequestEnvelope | ReplyEnvelope | ProgressEnvelope | EventEnvelope;

const schemaByKind = {
  request: requestSchema,
  reply: replySchema,
  progress: progressSchema,
  event: eventSchema,
} as const;
export type EnvelopeKind = keyof typeof schemaByKind;

/** What a receiver could learn from a message it rejects: enough to address an error reply. */
export interface DecodeFailure {
  error: CloudletError;
  id: string | null;
  type: string | undefined;
}

export type DecodeResult<K extends EnvelopeKind> =
  | { ok: true; envelope: z.infer<(typeof schemaByKind)[K]> }
  | ({ ok: false } & DecodeFailure);

const textDecoder = new TextDecoder('utf-8', { fatal: true });

function describeIssues(issues: readonly z.core.$ZodIssue[]): { path: string; message: string }[] {
  return issues.slice(0, 20).map((issue) => ({ path: formatPath(issue.path), message: issue.message }));
}

/** `['plugins', 2, 'options']` → `plugins[2].options`; the notation every error in cloudlet uses. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out === '' ? '(root)' : out;
}

/**
 * Parses and validates one message of the expected kind. Never throws: every way a message can be wrong
 * maps to a coded error, and whatever id/type could be salvaged is returned so the caller can still reply.
 */
export function decodeEnvelope<K extends EnvelopeKind>(
  raw: string | Uint8Array,
  expectedKind: K | readonly K[],
  maxBytes: number,
): DecodeResult<K> {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.byteLength;
  if (size > maxBytes) {
    return fail(cloudletError('MESSAGE_TOO_LARGE', `message is ${size} bytes; the limit is ${maxBytes}`, { size, maxBytes }));
  }
  let text: string;
  try {
    text = typeof raw === 'string' ? raw : textDecoder.decode(raw);
  } catch (cause) {
    return fail(cloudletError('BAD_JSON', 'message is not valid UTF-8', undefined, cause));
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    return fail(cloudletError('BAD_JSON', `message is not valid JSON: ${(cause as Error).message}`, undefined, cause));
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(cloudletError('BAD_ENVELOPE', 'the envelope must be a JSON object'));
  }
  const record = value as Record<string, unknown>;
  const salvage = (error: CloudletError): DecodeFailure & { ok: false } => ({
    ok: false,
    error,
    id: messageIdSchema.safeParse(record.id).success ? (record.id as string) : null,
    type: messageTypeSchema.safeParse(record.type).success ? (record.type as string) : undefined,
  });

  if (record.v !== PROTOCOL_VERSION) {
    const found = record.v === undefined ? 'has no "v" field' : `has version ${JSON.stringify(record.v)}`;
    return salvage(
      cloudletError('UNSUPPORTED_VERSION', `the envelope ${found}; this agent speaks v${PROTOCOL_VERSION} ("v": ${PROTOCOL_VERSION})`, {
        found: record.v ?? null,
        supported: [PROTOCOL_VERSION],
      }),
    );
  }
  const kinds: readonly K[] = typeof expectedKind === 'string' ? [expectedKind] : expectedKind;
  const kind = kinds.find((k) => k === record.kind);
  if (kind === undefined) {
    const allowed = kinds.map((k) => `"${k}"`).join(' or ');
    return salvage(
      cloudletError('BAD_ENVELOPE', `expected an envelope of kind ${allowed}, found ${JSON.stringify(record.kind ?? null)}`, {
        issues: [{ path: 'kind', message: `must be ${allowed}` }],
      }),
    );
  }
  const parsed = schemaByKind[kind].safeParse(value);
  if (!parsed.success) {
    const issues = describeIssues(parsed.error.issues);
    const summary = issues.map((issue) => `${issue.path}: ${issue.message}`).join('; ');
    return salvage(cloudletError('BAD_ENVELOPE', `invalid ${kind} envelope: ${summary}`, { issues }));
  }
  return { ok: true, envelope: parsed.data as z.infer<(typeof schemaByKind)[K]> };

  function fail(error: CloudletError): DecodeResult<K> {
    return { ok: false, error, id: null, type: undefined };
  }
}

export function encodeEnvelope(envelope: Envelope): string {
  return JSON.stringify(envelope);
}

export function makeRequest(fields: Omit<RequestEnvelope, 'v' | 'kind' | 'id'> & { id?: string }): RequestEnvelope {
  return { v: PROTOCOL_VERSION, kind: 'request', id: fields.id ?? crypto.randomUUID(), ...withoutUndefined(fields) } as RequestEnvelope;
}

export function makeReply(
  request: { id: string | null; type?: string | undefined },
  host: string,
  outcome: { ok: true; result: unknown } | { ok: false; error: WireError },
): ReplyEnvelope {
  const reply: ReplyEnvelope = { v: PROTOCOL_VERSION, kind: 'reply', id: request.id, host, ok: outcome.ok };
  if (request.type !== undefined) reply.type = request.type;
  if (outcome.ok) {
    if (outcome.result !== undefined) reply.result = outcome.result;
  } else {
    // The schema bounds messages so every receiver accepts the reply; a long handler message is cut, not lost.
    const { message } = outcome.error;
    reply.error = message.length > MAX_ERROR_MESSAGE ? { ...outcome.error, message: `${message.slice(0, MAX_ERROR_MESSAGE - 1)}…` } : outcome.error;
  }
  return reply;
}

export function makeProgress(request: RequestEnvelope, host: string, stage: string, detail?: Record<string, unknown>): ProgressEnvelope {
  const progress: ProgressEnvelope = { v: PROTOCOL_VERSION, kind: 'progress', id: request.id, type: request.type, host, stage };
  if (detail !== undefined) progress.detail = detail;
  return progress;
}

export function makeEvent(type: string, host: string, payload?: unknown): EventEnvelope {
  const event: EventEnvelope = { v: PROTOCOL_VERSION, kind: 'event', id: crypto.randomUUID(), type, host, time: Date.now() };
  if (payload !== undefined) event.payload = payload;
  return event;
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}
