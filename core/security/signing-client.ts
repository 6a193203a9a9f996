/**
 * A client transport that signs every request with the configured key and checks that replies are signed
 * by their host's key. It wraps any transport, so signing works the same on the local socket and RabbitMQ.
 */
import type { KeyObject } from 'node:crypto';
import { cloudletError } from '../errors.ts';
import type { ReplyEnvelope, RequestEnvelope } from '../envelope.ts';
import type { ClientTransport, GatherOptions, GatherResult, KnownHost, RequestOptions } from '../transports/transport.ts';
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
    if (inner.hosts) this.hosts = (waitMs) => inner.hosts!(waitMs);
  }

  /** The inner transport's registry, as it is (heartbeats carry no signature). */
  readonly hosts?: (waitMs?: number) => Promise<KnownHost[]>;

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
    // Each reply is verified once, whether accept, onReply or the result asks (the transports hand them the
    // same object): an Ed25519 check is the costly part of a gather's bookkeeping.
    const verdicts = new WeakMap<ReplyEnvelope, boolean>();
    const refusals = new Map<string, string>();
    const trusted = (reply: ReplyEnvelope) => {
      let verdict = verdicts.get(reply);
      if (verdict === undefined) {
        try {
          this.#check(reply, signed);
          verdict = true;
        } catch (error) {
          verdict = false;
          refusals.set(reply.host, (error as Error).message);
        }
        verdicts.set(reply, verdict);
      }
      return verdict;
    };
    // The inner transport counts a reply only once it is checked (accept): otherwise the first reply claiming
    // a host, forged or not, would stand for it, and the hosts a forged one names would be waited for. The
    // caller hears of a reply as it comes only once it is checked too.
    const { onReply } = options;
    const accept = (reply: ReplyEnvelope) => trusted(reply) && options.accept?.(reply) !== false;
    const result = await this.#inner.gather(signed, { ...options, accept, ...(onReply && { onReply: (reply) => trusted(reply) && onReply(reply) }) });
    // A transport that does not ask accept still hands over what it got: drop the untrusted here.
    const replies = result.replies.filter(trusted);
    const missing = [...new Set([...result.missing, ...result.replies.filter((reply) => !trusted(reply)).map((reply) => reply.host)])].sort();
    const untrusted = missing.flatMap((host) => (refusals.has(host) ? [{ host, reason: refusals.get(host) as string }] : []));
    return { replies, missing, ...(untrusted.length > 0 && { untrusted }), ...(result.down && { down: result.down }) };
  }

  subscribe: ClientTransport['subscribe'] = (onEvent) => this.#inner.subscribe(onEvent);

  close(): Promise<void> {
    return this.#inner.close();
  }
}
