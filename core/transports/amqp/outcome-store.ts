/**
 * Makes at-least-once delivery safe: a request id that was handled before is answered from its stored
 * reply instead of being run again, and a request that keeps coming back without an outcome (it crashed
 * the agent each time) is reported as poison. One append-only JSONL file per host, bounded in entries;
 * it is rewritten with the newest entries when it grows past twice the bound.
 *
 * Lines are written in batches, each batch one write(2) (a profile at 32 requests in flight showed the
 * per-line writes at ~8% of the agent's main thread; a batch holds ~6 lines there), without weakening
 * what each kind of line promises:
 * - a start (or abandoned) line is in the kernel when its promise resolves; the lines recorded in one
 *   synchronous burst (the deliveries of one socket read) share a write;
 * - a done line waits for `flush()`, which the transport calls right before its frames reach the socket
 *   (coalesce-writes.ts), so a reply never leaves before its outcome is written; the replies of one
 *   event-loop turn share a write.
 */
import { closeSync, openSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Buffer } from 'node:buffer';
import type { ReplyEnvelope } from '../../envelope.ts';

type Record_ =
  /** `n`: starts folded into one line by compaction (default 1). */
  | { id: string; t: 'start'; at: number; n?: number }
  /** Started here but passed on (no capacity): not a failed attempt. */
  | { id: string; t: 'abandoned'; at: number }
  | { id: string; t: 'done'; at: number; reply: ReplyEnvelope };

interface Entry {
  attempts: number;
  reply?: ReplyEnvelope;
}

/** How every line of an id begins: records are serialised with `id` first (see Record_). */
const linePrefix = (id: string) => `{"id":${JSON.stringify(id)},`;

export class OutcomeStore {
  readonly #file: string;
  readonly #maxEntries: number;
  readonly #entries = new Map<string, Entry>();
  #linesInFile = 0;
  /** The file, open for appending from the first record on (reopened after a compaction). */
  #fd: number | undefined;
  #compactions = 0;
  /** Lines recorded but not yet written, in order. */
  #pending: string[] = [];
  /** The last write failed part-way through a line: the next one starts with a newline. */
  #tornLine = false;
  /** The last write or rewrite failed: no rewrite is tried until a flush succeeds. */
  #unwritable = false;
  /** Settles once the lines of the current synchronous burst are written; undefined when none is due. */
  #burstWritten: Promise<void> | undefined;

  private constructor(file: string, maxEntries: number) {
    this.#file = file;
    this.#maxEntries = maxEntries;
  }

  static async open(file: string, maxEntries: number): Promise<OutcomeStore> {
    const store = new OutcomeStore(file, maxEntries);
    await mkdir(dirname(file), { recursive: true, mode: 0o750 });
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return '';
      throw error;
    });
    for (const line of text.split('\n')) {
      if (line === '') continue;
      try {
        store.#apply(JSON.parse(line) as Record_);
        store.#linesInFile++;
      } catch {
        // a line torn by a crash mid-write: skip it, the rest is intact
      }
    }
    return store;
  }

  #apply(record: Record_): void {
    const entry = this.#entries.get(record.id) ?? { attempts: 0 };
    if (record.t === 'start') entry.attempts += record.n ?? 1;
    else if (record.t === 'abandoned') entry.attempts = Math.max(0, entry.attempts - 1);
    else {
      entry.reply = record.reply;
      // Finished: its starts were not crashes. (A type that runs its repeats again must not creep towards
      // maxDeliveries with each one; compaction keeps only the reply of a finished request anyway.)
      entry.attempts = 0;
    }
    // Re-insert so Map order is recency order: the oldest entries are evicted first.
    this.#entries.delete(record.id);
    this.#entries.set(record.id, entry);
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
  }

  /** The stored reply of a request handled before, if any. */
  replyFor(id: string): ReplyEnvelope | undefined {
    return this.#entries.get(id)?.reply;
  }

  /** How many times the request was started without finishing (0 for a new id). */
  attempts(id: string): number {
    return this.#entries.get(id)?.attempts ?? 0;
  }

  /** Resolves once the start line is in the kernel: only then may the request's handler run. */
  recordStart(id: string): Promise<void> {
    this.#append({ id, t: 'start', at: Date.now() });
    return this.#writeAfterBurst();
  }

  recordAbandoned(id: string | undefined): Promise<void> {
    if (!id) return Promise.resolve();
    this.#append({ id, t: 'abandoned', at: Date.now() });
    return this.#writeAfterBurst();
  }

  /**
   * Records the outcome at once (a copy arriving now is answered from it); the line is written by the next
   * `flush()`, which must come before the reply is sent. `encoded`: the reply as JSON, when the caller has
   * it: the line is built around it, not serialised again.
   */
  recordDone(id: string, reply: ReplyEnvelope, encoded?: string): void {
    const record: Record_ = { id, t: 'done', at: Date.now(), reply };
    this.#append(record, encoded === undefined ? undefined : `${linePrefix(id)}"t":"done","at":${record.at},"reply":${encoded}}`);
  }

  /**
   * Writes every recorded line not yet written, in one write(2) on a descriptor kept open, so a crashed
   * agent process loses nothing (no fsync: the kernel has it). Throws when the file cannot be written; the
   * lines not written whole are kept, in order, for the next flush: none is lost while the disk is full.
   */
  flush(): void {
    if (this.#pending.length === 0) return;
    const lines = this.#pending;
    this.#pending = [];
    // A line torn by an earlier failed write is ended first, so the file still reads back line by line.
    const prefix = this.#tornLine ? '\n' : '';
    const bytes = Buffer.from(`${prefix}${lines.join('\n')}\n`);
    let written = 0;
    try {
      this.#fd ??= openSync(this.#file, 'a', 0o640);
      // A disk that fills up mid-write takes part of it (a short write) and refuses the rest.
      while (written < bytes.length) written += writeSync(this.#fd, bytes, written);
      this.#tornLine = false;
      this.#unwritable = false;
    } catch (error) {
      // Opened again by the next write: a file replaced or a disk freed meanwhile works again at once.
      this.#closeFile();
      this.#unwritable = true;
      // Which lines went in whole (they stay written), and whether the file now ends mid-line.
      let wholeEnd = prefix.length;
      let whole = 0;
      for (const line of lines) {
        const end = wholeEnd + Buffer.byteLength(line) + 1;
        if (end > written) break;
        wholeEnd = end;
        whole++;
      }
      if (written > 0) this.#tornLine = written > wholeEnd;
      this.#pending = [...lines.slice(whole), ...this.#pending];
      throw error;
    }
  }

  /** Whether a line of this id is recorded but not yet in the file (a reply must not leave before it is). */
  hasUnwritten(id: string): boolean {
    const prefix = linePrefix(id);
    return this.#pending.some((line) => line.startsWith(prefix));
  }

  /**
   * A start that will not run after all (its line could not be written, so the request was refused): it
   * no longer counts as an attempt. Its line is dropped if still unwritten, else an abandoned line follows.
   */
  cancelStart(id: string): void {
    const prefix = `${linePrefix(id)}"t":"start",`;
    const index = this.#pending.findLastIndex((line) => line.startsWith(prefix));
    if (index === -1) {
      this.#append({ id, t: 'abandoned', at: Date.now() });
      return;
    }
    this.#pending.splice(index, 1);
    this.#linesInFile--;
    this.#apply({ id, t: 'abandoned', at: Date.now() });
  }

  #append(record: Record_, line = JSON.stringify(record)): void {
    this.#apply(record);
    this.#pending.push(line);
    // The in-memory entries hold every pending line's effect, so the rewrite covers them too. While the
    // disk refuses writes it is not tried again on every line (it serialises every entry).
    if (++this.#linesInFile > this.#maxEntries * 2 && !this.#unwritable) {
      try {
        this.#compact();
      } catch {
        this.#unwritable = true; // the lines stay pending; the rewrite comes again after a good flush
      }
    }
  }

  /**
   * One write for the lines of this synchronous burst, queued behind it as a microtask: whoever awaits
   * the promise goes on only after the write (and sees its error, if any).
   */
  #writeAfterBurst(): Promise<void> {
    this.#burstWritten ??= new Promise<void>((resolve, reject) =>
      queueMicrotask(() => {
        this.#burstWritten = undefined;
        try {
          this.flush();
          resolve();
        } catch (error) {
          reject(error);
        }
      }),
    );
    return this.#burstWritten;
  }

  /**
   * Synchronous, so no line can be appended to the old file while the new one is renamed into place; it
   * runs once every outcomeHistory lines or more.
   */
  #compact(): void {
    const lines: string[] = [];
    // One line per entry: a finished request needs only its reply, an unfinished one its start count.
    // (Writing both made a full store compact again on the very next line.)
    for (const [id, entry] of this.#entries) {
      if (entry.reply) lines.push(JSON.stringify({ id, t: 'done', at: 0, reply: entry.reply }));
      else if (entry.attempts > 0) lines.push(JSON.stringify({ id, t: 'start', at: 0, n: entry.attempts }));
    }
    const temp = `${this.#file}.tmp`;
    writeFileSync(temp, lines.length > 0 ? `${lines.join('\n')}\n` : '');
    renameSync(temp, this.#file);
    this.#pending = [];
    this.#tornLine = false; // a fresh file, written whole
    this.#closeFile();
    this.#linesInFile = lines.length;
    this.#compactions++;
  }

  /** How often the file was rewritten (each rewrite costs the whole file). */
  get compactions(): number {
    return this.#compactions;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Writes what is pending and closes the file (it is opened again by the next write). */
  close(): void {
    try {
      this.flush();
    } finally {
      this.#closeFile();
    }
  }

  #closeFile(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}
