/**
 * Taking a thread out of a tinypool from outside: for a handler that ignores its cancel, and for a thread
 * that exits, which tinypool does not notice by itself. tinypool's public `threads` and the thread's 'error'
 * event (how tinypool learns that a thread died) are all it takes; core/pools.ts decides when.
 */
import type Tinypool from 'tinypool';
import type { TinypoolWorker } from 'tinypool';

/**
 * Stops thread `threadId` of `pool`, whatever it is doing. tinypool's own way (an abort signal per task)
 * would give every task a thread to itself, so this raises the thread's 'error' event (its public
 * `threads`), tinypool's signal that a thread died: it rejects every task on the thread with `reason`,
 * terminates the thread and starts another as `minThreads` requires. A thread no longer in the pool is left alone.
 */
export function stopThread(pool: Tinypool, threadId: number, reason: string): void {
  const thread = pool.threads.find((candidate) => candidate.threadId === threadId);
  if (thread) reportDeath(thread, new Error(`its thread was stopped: ${reason}`));
}

/** Raises `error` on a thread, for tinypool to drop it; once the thread has exited, Node has removed tinypool's listener and watchExits has dropped it. */
function reportDeath(thread: TinypoolWorker, error: Error): void {
  try {
    thread.emit('error', error);
  } catch (thrown) {
    if (thrown !== error) throw thrown; // 'error' with nobody listening throws the error itself
  }
}

/**
 * tinypool notices a thread that dies of an exception, not one that exits (process.exit in handler code,
 * even after its handler answered): it would keep the dead thread, its tasks unanswered, and hand it more.
 * So each thread's exit is watched, from the moment it says it is listening: an exit tinypool did not cause
 * is reported as the thread's 'error' (as stopThread does), while Node still has tinypool's listener on it —
 * Node removes every listener right after 'exit'.
 */
export function watchExits(pool: Tinypool, watched: WeakSet<object>): void {
  for (const thread of pool.threads) {
    if (watched.has(thread)) continue;
    watched.add(thread);
    thread.once('exit', (code: number) => {
      // Still in the pool: tinypool did not stop it itself (idle timeout, termination, a reported crash).
      if (pool.threads.includes(thread)) reportDeath(thread, new Error(`the thread exited (exit code ${code})`));
    });
  }
}
