/** Bounded parallel work: what a worker thread starts at once (qemu-img, QEMU) stays a handful. */

/**
 * A gate that lets at most `limit` calls of its function run at once; the others wait their turn, in order.
 * A call that ends hands its place straight to the next waiting one, so a new call cannot slip in between.
 */
export function atMost(limit: number): <R>(work: () => Promise<R>) => Promise<R> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (work) => {
    if (running >= limit) await new Promise<void>((resolve) => waiting.push(resolve));
    else running++;
    try {
      return await work();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
}
