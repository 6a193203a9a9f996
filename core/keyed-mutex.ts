/**
 * Serialises work per key in the agent's main thread: messages that name the same VM run one after the
 * other while messages for different VMs run in parallel. Handlers are stateless worker code; the lock
 * lives here, in the one place every message passes, and disappears with the agent process.
 */

/** A place in a key's line: `acquired` settles when every earlier holder of the key has released. */
export interface KeyedLock {
  readonly acquired: Promise<void>;
  /** True when nobody held or waited for the key: `acquired` settles at once, nothing to wait for. */
  readonly free: boolean;
  /**
   * Gives the key up: after the work, or before `acquired` settled when the waiter gave up (its time ran
   * out). A waiter that gives up leaves the line at once, while those behind it still wait for the holders
   * before it. Calling it again does nothing.
   */
  release(): void;
}

export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  /** Takes a place in `key`'s line, in call order. */
  acquire(key: string): KeyedLock {
    const earlier = this.#tails.get(key);
    const previous = earlier ?? Promise.resolve();
    let releaseCurrent!: () => void;
    const current = new Promise<void>((resolve) => (releaseCurrent = resolve));
    // The next in line waits for this place and every one before it, released early or not.
    const tail = previous.then(() => current);
    this.#tails.set(key, tail);
    let held = false;
    let released = false;
    const acquired = previous.then(() => {
      held = true;
    });
    const forgetIfLast = () => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    };
    return {
      acquired,
      free: earlier === undefined,
      release: () => {
        if (released) return;
        released = true;
        releaseCurrent();
        // Forgetting the key while an earlier holder still runs would let the next comer start beside it:
        // a waiter that gave up is forgotten only once those before it are done.
        if (held) forgetIfLast();
        else void previous.then(forgetIfLast);
      },
    };
  }

  /** Runs `work` once every earlier holder of `key` has finished. */
  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const lock = this.acquire(key);
    await lock.acquired;
    try {
      return await work();
    } finally {
      lock.release();
    }
  }

  /** Keys with a holder or a waiter. */
  get size(): number {
    return this.#tails.size;
  }
}
