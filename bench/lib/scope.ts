/**
 * Cleanup that runs whatever happens: each benchmark registers how to undo what it made (processes,
 * namespaces, broker objects, temp dirs) as soon as it made it; the runner closes the scope after the
 * benchmark, on failure, and on SIGINT/SIGTERM. Undo steps run last-registered first.
 */
import type { TestContext } from 'node:test';

export class CleanupScope {
  readonly #steps: (() => unknown)[] = [];
  #closed = false;

  /** Registers an undo step (the same shape as node:test's `t.after`). */
  after(step: () => unknown): void {
    if (this.#closed) throw new Error('cleanup scope already closed');
    this.#steps.push(step);
  }

  /** Runs every step, newest first; a failing step does not stop the others. Returns their errors. */
  async close(): Promise<Error[]> {
    this.#closed = true;
    const errors: Error[] = [];
    while (this.#steps.length > 0) {
      const step = this.#steps.pop() as () => unknown;
      try {
        await step();
      } catch (error) {
        errors.push(error as Error);
      }
    }
    return errors;
  }

  /**
   * The test-support helpers (namespaces, QEMU hosts) take a node:test context only to call `t.after`;
   * this lets the bench reuse them, with their cleanup tied to this scope.
   */
  asTestContext(): TestContext {
    return { after: (step: () => unknown) => this.after(step) } as unknown as TestContext;
  }
}
