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

  /** Throws UNTRUSTED_REPLY for a reply that claims a host whose key does not sign it. */
  #check(reply: ReplyEnvelope): ReplyEnvelope {
    const key = this.#options.hostKeys.get(reply.host);
    if (key ? signatureValid(reply, key) : !this.#options.requireSignedReplies) return reply;
    throw cloudletError('UNTRUSTED_REPLY', key ? `the reply claiming to be from "${reply.host}" is not signed by its key` : `no key is configured for host "${reply.host}" (security.hostKeys)`, {
      host: reply.host,
    });
  }

  async request(request: RequestEnvelope, options?: RequestOptions): Promise<ReplyEnvelope> {
    return this.#check(await this.#inner.request(this.#sign(request), options));
  }

  async gather(request: RequestEnvelope, options: GatherOptions = {}): Promise<GatherResult> {
    const untrusted: string[] = [];
    const result = await this.#inner.gather(this.#sign(request), options);
    const replies = result.replies.filter((reply) => {
      try {
        this.#check(reply);
        return true;
      } catch {
        untrusted.push(reply.host);
        return false;
      }
    });
    return { replies, missing: [...result.missing, ...untrusted].sort() };
  }

  subscribe: ClientTransport['subscribe'] = (onEvent) => this.#inner.subscribe(onEvent);

  close(): Promise<void> {
    return this.#inner.close();
  }
}
