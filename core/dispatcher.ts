/**
 * The request path in one place: a raw delivery is decoded, checked (version, size, target, deadline,
 * type, payload), run in its type's worker pool and answered. Whatever goes wrong becomes a coded error
 * reply; nothing here throws into the transport, so a bad message can never take the agent down.
 */
import { Buffer } from 'node:buffer';
import { Cancellation } from './cancellation.ts';
import { lazyChild, type Logger } from './logger.ts';
import { CloudletError, cloudletError, thrownMessage, type WireError } from './errors.ts';
import { decodeEnvelope, encodeEnvelope, formatPath, makeProgress, makeReply, progressSchema, type ReplyEnvelope, type RequestEnvelope } from './envelope.ts';
import type { MessageRoute } from './config/host-config.ts';
import type { PoolManager, RunOutcome } from './pools.ts';
import { KeyedMutex, type KeyedLock } from './keyed-mutex.ts';
import type { RequestAuthorizer } from './security/authorizer.ts';
import type { InboundDelivery, ReplySealer } from './transports/transport.ts';

export interface DispatcherOptions {
  hostId: string;
  maxMessageBytes: number;
  routes: ReadonlyMap<string, MessageRoute>;
  pools: PoolManager;
  log: Logger;
  /** How often a running request tells its caller it is still alive. */
  keepaliveMs: number;
  /** Told about every answered request (metrics); must not throw or block. */
  observer?: DispatchObserver;
  /** Checks signatures, permissions and replays (security); absent: every well-formed request may run. */
  authorizer?: RequestAuthorizer;
  /** Signs every reply with the host's key. */
  signReply?: (reply: ReplyEnvelope) => ReplyEnvelope;
}

/** What the dispatcher reports for each message it answered or refused. */
export interface DispatchOutcome {
  type: string | undefined;
  ok: boolean;
  code?: string;
  /** Time from acceptance to reply; 0 for messages refused before reaching a pool. */
  elapsedMs: number;
}

export type DispatchObserver = (outcome: DispatchOutcome) => void;

interface InFlight {
  request: RequestEnvelope;
  cancel: Cancellation;
  done: Promise<void>;
  /** Its handler's outcome is in (the reply may still be on its way): no longer listed in `ctx.inFlight`. */
  ran?: boolean;
}

export class Dispatcher {
  readonly #options: DispatcherOptions;
  readonly #inFlight = new Set<InFlight>();
  readonly #locks = new KeyedMutex();
  #accepting = true;

  constructor(options: DispatcherOptions) {
    this.#options = options;
  }

  get inFlightCount(): number {
    return this.#inFlight.size;
  }

  /** The transport's listener. Never throws and never leaves a replyable message unanswered. */
  readonly handle = (delivery: InboundDelivery): void => {
    void this.#handle(delivery).catch((error: unknown) => this.#answerAfterBug(delivery, error));
  };

  /** Deliveries a reply was handed to the transport for: a bug after that must not answer twice. */
  readonly #answered = new WeakSet<InboundDelivery>();

  /**
   * A bug in the dispatcher or a pool threw: the caller still gets an answer (INTERNAL, with the request's
   * id when it can be read), rather than wait for its timeout, and on RabbitMQ the delivery is settled.
   */
  async #answerAfterBug(delivery: InboundDelivery, error: unknown): Promise<void> {
    const { hostId, log, maxMessageBytes } = this.#options;
    log.error({ err: error }, 'dispatcher failed while answering a message');
    if (!delivery.replyable || this.#answered.has(delivery)) return;
    const decoded = decodeEnvelope(delivery.body, 'request', maxMessageBytes);
    const ids = decoded.ok ? decoded.envelope : { id: decoded.id, type: decoded.type };
    const internal = cloudletError('INTERNAL', `host "${hostId}" failed while handling the message: ${thrownMessage(error)}; the agent log has the details`);
    await this.#reply(delivery, makeReply(ids, hostId, { ok: false, error: internal.toWire() })).catch((again: unknown) =>
      log.error({ err: again }, 'could not answer a message after a dispatcher failure'),
    );
  }

  async #handle(delivery: InboundDelivery): Promise<void> {
    const { hostId, maxMessageBytes, log } = this.#options;
    const decoded = decodeEnvelope(delivery.body, 'request', maxMessageBytes);
    if (!decoded.ok) {
      this.#options.observer?.({ type: decoded.type, ok: false, code: decoded.error.code, elapsedMs: 0 });
      log.warn({ code: decoded.error.code, msgId: decoded.id, type: decoded.type }, `rejected a message: ${decoded.error.message}`);
      if (delivery.replyable) await this.#reply(delivery, makeReply({ id: decoded.id, type: decoded.type }, hostId, { ok: false, error: decoded.error.toWire() }));
      return;
    }
    const request = decoded.envelope;
    const authError = delivery.trusted ? undefined : this.#options.authorizer?.check(request);
    if (authError) {
      this.#options.observer?.({ type: request.type, ok: false, code: authError.code, elapsedMs: 0 });
      log.warn({ code: authError.code, msgId: request.id, type: request.type, key: request.auth?.key, sender: delivery.sender }, `refused an unauthenticated request: ${authError.message}`);
      return this.#reply(delivery, makeReply(request, hostId, { ok: false, error: authError.toWire() }));
    }
    const refuse = (error: CloudletError) => {
      this.#options.observer?.({ type: request.type, ok: false, code: error.code, elapsedMs: 0 });
      log.info({ code: error.code, msgId: request.id, type: request.type }, `refused "${request.type}": ${error.message}`);
      return this.#reply(delivery, makeReply(request, hostId, { ok: false, error: error.toWire() }), request.id);
    };

    if (request.target !== undefined && request.target !== hostId) {
      return refuse(cloudletError('WRONG_HOST', `this is host "${hostId}"; the message is for "${request.target}"`, { host: hostId, target: request.target }));
    }
    if (!this.#accepting) {
      return refuse(cloudletError('SHUTTING_DOWN', `host "${hostId}" is shutting down; send the message again to another host or later`));
    }
    const route = this.#options.routes.get(request.type);
    if (!route) {
      return refuse(
        cloudletError('UNKNOWN_TYPE', `no plugin on host "${hostId}" handles "${request.type}"`, {
          type: request.type,
          known: [...this.#options.routes.keys()].sort(),
        }),
      );
    }
    const now = Date.now();
    if (request.deadline !== undefined && request.deadline <= now) {
      return refuse(cloudletError('DEADLINE_EXCEEDED', `the deadline passed ${now - request.deadline} ms before the message was taken`));
    }
    const payload = route.definition.payload.safeParse(request.payload ?? {});
    if (!payload.success) {
      const issues = payload.error.issues.slice(0, 20).map((issue) => ({ path: `payload.${formatPath(issue.path)}`.replace('.(root)', ''), message: issue.message }));
      return refuse(
        cloudletError('INVALID_PAYLOAD', `invalid payload for "${request.type}": ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, { issues }),
      );
    }

    const serializeBy = route.definition.serializeBy;
    const lockValue = serializeBy ? (payload.data as Record<string, unknown> | undefined)?.[serializeBy] : undefined;
    const lockKey = lockValue === undefined ? undefined : lockKeyOf(`${route.plugin.plugin.name}:${serializeBy}`, lockValue);
    if (lockKey === null) {
      return refuse(
        cloudletError('INVALID_PAYLOAD', `payload.${serializeBy} cannot serve as the lock key of "${request.type}": the plugin's payload schema made it a value with no JSON spelling (a cycle)`, {
          issues: [{ path: `payload.${serializeBy}`, message: 'not representable as JSON' }],
        }),
      );
    }

    // The host spends at most the type's timeoutMs on a message, counted from now (queueing included), and
    // never past the caller's deadline; the pool tells them apart and the handler sees the earlier one.
    const deadline = request.deadline ?? Number.POSITIVE_INFINITY;
    const messageLog = lazyChild(log, { msgId: request.id, type: request.type, plugin: route.plugin.plugin.name });
    const cancel = new Cancellation();
    let finished!: () => void;
    const entry: InFlight = { request, cancel, done: new Promise<void>((resolve) => (finished = resolve)) };
    this.#inFlight.add(entry);
    // Taken as the message is handed to its thread, not now: it may wait for one, and what it is told about
    // must be as fresh as it can be (MessageDefinition.seesInFlight).
    const seesInFlight = route.definition.seesInFlight;
    const inFlight = seesInFlight && seesInFlight.length > 0 ? () => this.#inFlightIds(seesInFlight, entry) : undefined;
    const started = performance.now();
    messageLog.debug('accepted');
    // Progress keeps a caller waiting; this keeps it waiting for long handlers that report nothing.
    const keepalive = setInterval(() => delivery.progress(makeProgress(request, hostId, 'alive')), this.#options.keepaliveMs);
    keepalive.unref();
    let lock: KeyedLock | undefined;
    const runInPool = () =>
      this.#options.pools.run(
        { id: request.id, type: request.type, deadline, payload: payload.data, acceptedAt: now, ...(inFlight ? { inFlight } : {}) },
        {
          // The pool takes the message (or answers BUSY) before it queues for the lock, and holds it there
          // like a message waiting for a thread: it shows as queued, and it is answered as soon as its time
          // runs out or it is cancelled, without waiting for the holder to finish.
          // A free lock is taken at once (its `acquired` is already on its way): no place in the queue.
          ...(lockKey === undefined ? {} : { startAfter: () => ((lock = this.#locks.acquire(lockKey)).free ? undefined : lock.acquired) }),
          cancellation: cancel,
          log: messageLog,
          onProgress: (stage, detail) => {
            const progress = makeProgress(request, hostId, stage, detail);
            // A handler's progress crosses the wire like everything else: a malformed one is dropped here, loudly.
            if (progressSchema.safeParse(progress).success) delivery.progress(progress);
            else messageLog.warn({ stage: String(stage).slice(0, 80) }, 'dropped a progress update whose stage or detail is invalid (stage: 1–64 characters, detail: an object)');
          },
        },
      );
    try {
      let outcome: RunOutcome;
      try {
        outcome = await runInPool();
        entry.ran = true;
      } finally {
        // Ran, refused, or gave up waiting: the next message for the key may go (once those before it are done).
        lock?.release();
      }
      const elapsedMs = Math.round((performance.now() - started) * 10) / 10;
      this.#options.observer?.(outcome.ok ? { type: request.type, ok: true, elapsedMs } : { type: request.type, ok: false, code: outcome.error.code, elapsedMs });
      let reply: ReplyEnvelope;
      if (outcome.ok) {
        messageLog.debug({ elapsedMs }, 'handled');
        reply = makeReply(request, hostId, { ok: true, result: outcome.result });
      } else {
        // A handler's bug (HANDLER_ERROR) is logged with where it threw and the code it threw; the caller gets
        // only the message (and the code, in details). A handler that ignored its cancel is named as such.
        const thrownCode = (outcome.error.details as { thrownCode?: unknown } | undefined)?.thrownCode;
        messageLog.warn(
          {
            code: outcome.error.code,
            elapsedMs,
            ...(outcome.error.code === 'HANDLER_ERROR' && typeof thrownCode === 'string' ? { thrownCode } : {}),
            ...(outcome.stack === undefined ? {} : { stack: outcome.stack }),
            ...(outcome.threadStopped ? { threadStopped: true } : {}),
          },
          outcome.threadStopped
            ? `failed: ${outcome.error.message}; the handler ignored its cancel for the pool's cancelGraceMs, so its thread was stopped`
            : `failed: ${outcome.error.message}`,
        );
        reply = makeReply(request, hostId, { ok: false, error: outcome.error.toWire() });
      }
      await this.#reply(delivery, reply, request.id);
    } finally {
      clearInterval(keepalive);
      this.#inFlight.delete(entry);
      finished();
    }
  }

  /** The ids of the requests of each of `types` accepted and not yet run to their outcome, but `self`'s. */
  #inFlightIds(types: readonly string[], self: InFlight): Record<string, string[]> {
    const ids = new Map<string, string[]>(types.map((type) => [type, []]));
    for (const entry of this.#inFlight) if (entry !== self && !entry.ran) ids.get(entry.request.type)?.push(entry.request.id);
    return Object.fromEntries(ids);
  }

  /**
   * Signs (when the host signs replies) and sends a reply, measured as it will travel. `acceptedId`: the id
   * the authorizer accepted; a retryable failure (BUSY, TIMEOUT, SHUTTING_DOWN…) is no outcome, so the same
   * id sent again — a redelivery, or the client publishing again after a reconnect — must be let in again.
   */
  #reply(delivery: InboundDelivery, reply: ReplyEnvelope, acceptedId?: string): Promise<void> {
    this.#answered.add(delivery);
    if (acceptedId !== undefined && reply.error?.retryable) this.#options.authorizer?.release(acceptedId);
    const fitted = this.#seal(reply);
    return delivery.reply(fitted.reply, fitted.encoded, this.#seal);
  }

  /** What the transport sends: signed, then measured (a signature is part of the size). */
  readonly #seal = (reply: ReplyEnvelope): { reply: ReplyEnvelope; encoded: string } => this.#fitToLimit(this.#sign(reply));

  /** The same, for the replies a transport makes by itself (AgentTransport.listen). */
  get sealReply(): ReplySealer {
    return this.#seal;
  }

  #sign(reply: ReplyEnvelope): ReplyEnvelope {
    return this.#options.signReply ? this.#options.signReply(reply) : reply;
  }

  /**
   * The reply, or MESSAGE_TOO_LARGE in its place, with its JSON: measured after signing (which adds the
   * `auth` field), and serialised once — the transport sends this text (a list-vms reply is ~400 KB).
   */
  #fitToLimit(reply: ReplyEnvelope): { reply: ReplyEnvelope; encoded: string } {
    const encoded = encodeEnvelope(reply);
    const size = Buffer.byteLength(encoded);
    if (size <= this.#options.maxMessageBytes) return { reply, encoded };
    const error: WireError = cloudletError('MESSAGE_TOO_LARGE', `the reply would be ${size} bytes; the limit is ${this.#options.maxMessageBytes}`, {
      size,
      maxBytes: this.#options.maxMessageBytes,
    }).toWire();
    this.#options.log.warn(
      { msgId: reply.id, type: reply.type, code: 'MESSAGE_TOO_LARGE', size, maxBytes: this.#options.maxMessageBytes },
      `the reply to "${reply.type}" would be ${size} bytes; the limit is ${this.#options.maxMessageBytes} (limits.maxMessageBytes): answered MESSAGE_TOO_LARGE instead`,
    );
    const refused = this.#sign(makeReply({ id: reply.id, type: reply.type }, reply.host, { ok: false, error }));
    return { reply: refused, encoded: encodeEnvelope(refused) };
  }

  /** From now on every request is answered with SHUTTING_DOWN (retryable), so callers can go elsewhere. */
  stopAccepting(): void {
    this.#accepting = false;
  }

  /**
   * Stops taking new work, waits up to `graceMs` for what is running, then cancels the rest; each cancelled
   * message is answered with SHUTTING_DOWN by its pool run.
   */
  async drain(graceMs: number): Promise<{ finished: number; cancelled: number }> {
    this.#accepting = false;
    const running = [...this.#inFlight];
    if (running.length === 0) return { finished: 0, cancelled: 0 };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const allDone = Promise.all(running.map((entry) => entry.done));
    const timedOut = await Promise.race([
      allDone.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), graceMs);
      }),
    ]);
    clearTimeout(timer);
    if (!timedOut) return { finished: running.length, cancelled: 0 };
    const stillRunning = [...this.#inFlight];
    for (const entry of stillRunning) {
      entry.cancel.cancel(
        new CloudletError('SHUTTING_DOWN', `the agent shut down while "${entry.request.type}" was running (grace period ${graceMs} ms)`),
      );
    }
    await allDone;
    return { finished: running.length - stillRunning.length, cancelled: stillRunning.length };
  }
}

/**
 * The lock key for a serializeBy value: the value as JSON (BigInts as `<n>n`, which a payload transform can
 * make), so equal values share a key. Null when the value has no JSON spelling (a cycle).
 */
function lockKeyOf(scope: string, value: unknown): string | null {
  try {
    return `${scope}=${JSON.stringify(value, (_key, item: unknown) => (typeof item === 'bigint' ? `${item}n` : item))}`;
  } catch {
    return null;
  }
}
