/**
 * The ids of the calls a client has in flight. Replies are matched to calls by the request's id, so a
 * second call with the id of one still waiting could not be told apart from it: one of the two callers
 * would get both answers, or the other's, and the other would wait until it timed out. Such a call is
 * refused at once instead. The id is free again as soon as its call settles (a retry may reuse it).
 */
import { cloudletError } from '../errors.ts';

export class InFlightIds {
  readonly #ids = new Set<string>();

  /** Runs `call` with `id` taken for as long as it runs; DUPLICATE_ID, and no call, while it is taken. */
  async run<T>(id: string, call: () => Promise<T>): Promise<T> {
    if (this.#ids.has(id)) {
      throw cloudletError(
        'DUPLICATE_ID',
        `a request with id "${id}" is still waiting for its reply on this client; replies are matched by id, so wait for it to settle, or give the new request an id of its own`,
        { id },
      );
    }
    this.#ids.add(id);
    try {
      return await call();
    } finally {
      this.#ids.delete(id);
    }
  }
}
