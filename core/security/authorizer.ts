/**
 * Who may command this host. With `security.requireSignatures`, a request must be signed by a key listed in
 * `security.clients`, that key must be allowed the message type, the request must carry a deadline no
 * further ahead than `maxDeadlineMs`, and its id must not have been taken before (remembered until its
 * deadline, so a captured message cannot be replayed while it would still be valid) — except for the types
 * whose handlers answer repeats themselves (`handlesRepeats`): a repeat of one of those makes no second
 * effect by the handler's contract, and refusing it would leave a client whose answer was lost without one.
 */
import type { KeyObject } from 'node:crypto';
import { CloudletError, cloudletError } from '../errors.ts';
import type { RequestEnvelope } from '../envelope.ts';
import type { SecurityConfig } from '../config/schema.ts';
import { signatureValid } from './envelope-auth.ts';
import { keyIdOf, publicKeyFrom } from './keys.ts';

interface ClientKey {
  name: string;
  key: KeyObject;
  allowAll: boolean;
  allow: ReadonlySet<string>;
}

export interface AuthorizerOptions {
  /** Message types whose handlers answer repeats of a request id themselves: their ids may be taken again. */
  handlesRepeats?: ReadonlySet<string>;
}

export class RequestAuthorizer {
  readonly #required: boolean;
  readonly #maxDeadlineMs: number;
  readonly #handlesRepeats: ReadonlySet<string>;
  readonly #clients = new Map<string, ClientKey>();
  /** Request ids taken, with the deadline until which they must not be taken again. */
  readonly #seen = new Map<string, number>();
  #checksSincePrune = 0;

  constructor(config: SecurityConfig, options: AuthorizerOptions = {}) {
    this.#required = config.requireSignatures;
    this.#maxDeadlineMs = config.maxDeadlineMs;
    this.#handlesRepeats = options.handlesRepeats ?? new Set();
    for (const [index, client] of config.clients.entries()) {
      const key = publicKeyFrom(client.publicKey, `security.clients[${index}].publicKey`);
      this.#clients.set(keyIdOf(key), { name: client.name, key, allowAll: client.allow.includes('*'), allow: new Set(client.allow) });
    }
  }

  get required(): boolean {
    return this.#required;
  }

  /** undefined when the request may run; else the error to answer it with. Records the id when it may. */
  check(request: RequestEnvelope, now = Date.now()): CloudletError | undefined {
    if (!this.#required) return undefined;
    const auth = request.auth;
    if (!auth) return cloudletError('UNSIGNED', 'this host accepts only signed requests (see "cloudlet keys")');
    const client = this.#clients.get(auth.key);
    if (!client) return cloudletError('BAD_SIGNATURE', `key ${auth.key} is not one of this host's client keys`, { key: auth.key });
    if (!signatureValid(request, client.key)) return cloudletError('BAD_SIGNATURE', `the signature does not match the request (key "${client.name}")`, { key: auth.key });
    if (!client.allowAll && !client.allow.has(request.type)) {
      return cloudletError('FORBIDDEN', `key "${client.name}" may not send "${request.type}" to this host`, { key: client.name, type: request.type, allowed: [...client.allow] });
    }
    if (request.deadline === undefined || request.deadline > now + this.#maxDeadlineMs) {
      return cloudletError('REPLAYED', `a signed request needs a deadline at most ${this.#maxDeadlineMs} ms ahead`, { maxDeadlineMs: this.#maxDeadlineMs });
    }
    if (this.#handlesRepeats.has(request.type)) return undefined;
    this.#prune(now);
    if (this.#seen.has(request.id)) return cloudletError('REPLAYED', `request id ${request.id} was already taken by this host`, { id: request.id });
    this.#seen.set(request.id, request.deadline);
    return undefined;
  }

  /** Lets `id` in again: its first run ended in a retryable failure, which is no outcome (see the dispatcher). */
  release(id: string): void {
    this.#seen.delete(id);
  }

  #prune(now: number): void {
    if (++this.#checksSincePrune < 1_000 && this.#seen.size < 100_000) return;
    this.#checksSincePrune = 0;
    for (const [id, deadline] of this.#seen) if (deadline < now) this.#seen.delete(id);
  }
}
