/**
 * A cancel for one message on the main thread: what an AbortController does for the dispatcher and the
 * pools, without an EventTarget per message. Every message gets one and almost none is ever cancelled (only
 * an agent's shutdown does), so creating one costs an object; an AbortController and its listener cost
 * ~9 µs a message (docs/PERFORMANCE.md, F11).
 */
import type { CloudletError } from './errors.ts';

export type CancelListener = (reason: CloudletError) => void;

export class Cancellation {
  #reason: CloudletError | undefined;
  #listeners: Set<CancelListener> | undefined;

  /** Why it was cancelled; undefined while it has not been. */
  get reason(): CloudletError | undefined {
    return this.#reason;
  }

  /**
   * Cancels once; later calls keep the first reason. Listeners run in the order they were added; one that
   * throws does not keep the others from running, and the first error is thrown after them all.
   */
  cancel(reason: CloudletError): void {
    if (this.#reason) return;
    this.#reason = reason;
    const listeners = this.#listeners;
    this.#listeners = undefined;
    let failure: { error: unknown } | undefined;
    for (const listener of listeners ?? []) {
      try {
        listener(reason);
      } catch (error) {
        failure ??= { error };
      }
    }
    if (failure) throw failure.error;
  }

  /**
   * Calls `listener` when cancelled (at once if it already is); returns what stops listening.
   */
  onCancel(listener: CancelListener): () => void {
    if (this.#reason) {
      listener(this.#reason);
      return () => undefined;
    }
    (this.#listeners ??= new Set()).add(listener);
    return () => void this.#listeners?.delete(listener);
  }
}
