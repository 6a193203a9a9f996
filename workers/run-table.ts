/**
 * Which thread of a pool runs which task, in memory the pool's threads share with the main thread.
 *
 * A handler that ignores its cancel is stopped by terminating its thread. tinypool can do that for a task
 * given an abort signal, but it then gives that task a thread of its own, and a pool whose threads take
 * several tasks at once (`tasksPerThread`, docs/PERFORMANCE.md F12) gives tinypool no signal. So each thread
 * writes here the runs it is working on, and the main thread looks up the thread to stop.
 *
 * Layout (Int32): [tasksPerThread, maxThreads, then one row per tinypool worker id 1..maxThreads:
 * threadId, then tasksPerThread cells holding a run number or 0 for free]. A thread that replaces a stopped
 * one gets the same worker id and clears the row; cells change only by compare-and-exchange, so the stopped
 * thread's late writes cannot free a cell its successor took. Web-standard (SharedArrayBuffer, Atomics):
 * the same module runs under Deno.
 */

const HEADER = 2;

/** A run number as stored: positive, and unique among the runs of a pool in flight. */
export type Run = number;

export class RunTable {
  readonly buffer: SharedArrayBuffer;
  readonly #cells: Int32Array;
  readonly #tasksPerThread: number;
  readonly #maxThreads: number;

  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.#cells = new Int32Array(buffer);
    this.#tasksPerThread = this.#cells[0] ?? 0;
    this.#maxThreads = this.#cells[1] ?? 0;
  }

  static create(maxThreads: number, tasksPerThread: number): RunTable {
    const buffer = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT * (HEADER + maxThreads * (tasksPerThread + 1)));
    const cells = new Int32Array(buffer);
    cells[0] = tasksPerThread;
    cells[1] = maxThreads;
    return new RunTable(buffer);
  }

  /** The row of tinypool worker `workerId` (1-based), or -1 when the table has none for it. */
  #row(workerId: number): number {
    if (!Number.isInteger(workerId) || workerId < 1 || workerId > this.#maxThreads) return -1;
    return HEADER + (workerId - 1) * (this.#tasksPerThread + 1);
  }

  /** Called by a thread as it starts: the row is its own from now on. */
  attach(workerId: number, threadId: number): ThreadRow | undefined {
    const row = this.#row(workerId);
    if (row < 0) return undefined;
    Atomics.store(this.#cells, row, threadId);
    for (let cell = row + 1; cell <= row + this.#tasksPerThread; cell++) Atomics.store(this.#cells, cell, 0);
    return new ThreadRow(this.#cells, row, this.#tasksPerThread);
  }

  /** The thread id of the thread working on `run` now, or undefined (not started yet, or done). */
  threadOf(run: Run): number | undefined {
    for (let workerId = 1; workerId <= this.#maxThreads; workerId++) {
      const row = this.#row(workerId);
      for (let cell = row + 1; cell <= row + this.#tasksPerThread; cell++) {
        if (Atomics.load(this.#cells, cell) === run) return Atomics.load(this.#cells, row);
      }
    }
    return undefined;
  }
}

/** One thread's row: where it says which runs it is working on. */
export class ThreadRow {
  readonly #cells: Int32Array;
  readonly #row: number;
  readonly #tasksPerThread: number;

  constructor(cells: Int32Array, row: number, tasksPerThread: number) {
    this.#cells = cells;
    this.#row = row;
    this.#tasksPerThread = tasksPerThread;
  }

  /** Marks `run` as running here; returns its cell for `release`, or -1 if every cell is taken. */
  claim(run: Run): number {
    for (let cell = this.#row + 1; cell <= this.#row + this.#tasksPerThread; cell++) {
      if (Atomics.compareExchange(this.#cells, cell, 0, run) === 0) return cell;
    }
    return -1;
  }

  release(cell: number, run: Run): void {
    if (cell >= 0) Atomics.compareExchange(this.#cells, cell, run, 0);
  }
}
