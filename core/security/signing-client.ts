/**
 * A client transport that signs every request with the configured key and checks that replies are signed
 * by their host's key. It wraps any transport, so signing works the same on the local socket and RabbitMQ.
 */
import type { KeyObject } from 'node:crypto';
import { cloudletError } from '../errors.ts';
import type { ReplyEnvelope, RequestEnvelope } from '../envelope.ts';
import type { ClientTransport, GatherOptions, GatherResult, RequestOptions } from '../transports/transport.ts';
import { signatureValid, signEnvelope, type Signer } from './envelope-auth.ts';

export interface SigningOptions {
  signer?: Signer;
  hostKeys: ReadonlyMap<string, KeyObject>;
  requireSignedReplies: boolean;
}

export class SigningClientTransport implements ClientTransport {
  readonly kind: string;
  readonly #inner: ClientTransport;
  readonly #options: SigningOptions;

  constructor(inner: ClientTransport, options: SigningOptions) {
    this.#inner = inner;
    this.kind = inner.kind;
    this.#options = options;
  }

  #sign(request: RequestEnvelope): RequestEnvelope {
    return this.#options.signer ? signEnvelope(request, this.#options.signer) : request;
  }

  /**
   * Throws UNTRUSTED_REPLY for a reply that claims a host whose key does not sign it, or that names another
   * request than `request`. A signature proves who wrote a reply, not which request it answers: only its
   * `id` says that. A reply with `"id": null` (the host could not read what it was sent) names none, and
   * whoever holds one could hand it to any caller as its answer.
   */
  #check(reply: ReplyEnvelope, request: RequestEnvelope): ReplyEnvelope {
    const key = this.#options.hostKeys.get(reply.host);
    if (!key && !this.#options.requireSignedReplies) return reply;
    if (!key) throw cloudletError('UNTRUSTED_REPLY', `no key is configured for host "${reply.host}" (security.hostKeys)`, { host: reply.host });
    if (!signatureValid(reply, key)) throw cloudletError('UNTRUSTED_REPLY', `the reply claiming to be from "${reply.host}" is not signed by its key`, { host: reply.host });
    if (reply.id !== request.id) {
      const named = reply.id === null ? `names no request (the host could not read one: ${reply.error?.code ?? 'no error'})` : `answers request ${reply.id}`;
      throw cloudletError('UNTRUSTED_REPLY', `the signed reply from "${reply.host}" ${named}, not ${request.id}`, {
        host: reply.host,
        id: reply.id,
        expected: request.id,
        ...(reply.error ? { code: reply.error.code } : {}),
      });
    }
    return reply;
  }

  async request(request: RequestEnvelope, options?: RequestOptions): Promise<ReplyEnvelope> {
    const signed = this.#sign(request);
    return this.#check(await this.#inner.request(signed, options), signed);
  }

  async gather(request: RequestEnvelope, options: GatherOptions = {}): Promise<GatherResult> {
    const signed = this.#sign(request);
    // Each reply is verified once, whether onReply or the result asks first (the transports hand both the
    // same object): an Ed25519 check is the costly part of a gather's bookkeeping.
    const verdicts = new WeakMap<ReplyEnvelope, boolean>();
    const trusted = (reply: ReplyEnvelope) => {
      let verdict = verdicts.get(reply);
      if (verdict === undefined) {
        try {
          this.#check(reply, signed);
          verdict = true;
        } catch {
          verdict = false;
        }
        verdicts.set(reply, verdict);
      }
      return verdict;
    };
    // The caller hears of a reply as it comes only once it is checked: the inner transport would pass on
    // whatever claims to be a host's answer.
    const { onReply } = options;
    const result = await this.#inner.gather(signed, { ...options, ...(onReply && { onReply: (reply) => trusted(reply) && onReply(reply) }) });
    const untrusted = result.replies.filter((reply) => !trusted(reply)).map((reply) => reply.host);
    return { replies: result.replies.filter(trusted), missing: [...result.missing, ...untrusted].sort() };
  }

  subscribe: ClientTransport['subscribe'] = (onEvent) => this.#inner.subscribe(onEvent);

  close(): Promise<void> {
    return this.#inner.close();
  }
}
