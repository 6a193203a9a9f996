/**
 * Newline-delimited JSON framing over a byte stream, with a hard limit per frame: a peer that sends an
 * endless line costs at most `maxBytes` of memory, and the stream stays usable after the next newline.
 */
import { Buffer } from 'node:buffer';
import { messageIdSchema, messageTypeSchema } from '../envelope.ts';

export interface FrameReaderEvents {
  /** One complete frame, without its newline. Bytes, not text: the decoder reports invalid UTF-8. */
  onFrame(frame: Buffer): void;
  /** A frame exceeded the limit; its bytes were discarded, all but its first HEAD_BYTES (`head`). */
  onOversize(size: number, head: Buffer): void;
}

/** What an oversize frame keeps of its start: enough for the envelope's id, type and kind. */
const HEAD_BYTES = 1024;

export class FrameReader {
  readonly #maxBytes: number;
  readonly #events: FrameReaderEvents;
  #pieces: Buffer[] = [];
  #bufferBytes = 0;
  /** Bytes of an oversize frame seen so far; its remainder is skipped up to the next newline. */
  #discarding = 0;
  #head: Buffer = Buffer.alloc(0);
  /** Paused: frames are not handed out; what arrives (and the rest of the chunk being read) waits here. */
  #paused = false;
  #held: Buffer[] = [];
  #ended = false;
  /** A chunk is being read: frames handed out now come from inside that loop (a consumer may pause or resume). */
  #reading = false;

  constructor(maxBytes: number, events: FrameReaderEvents) {
    this.#maxBytes = maxBytes;
    this.#events = events;
  }

  push(chunk: Buffer): void {
    if (this.#paused || this.#reading) {
      // Copy: the socket may reuse the chunk's memory after this callback.
      this.#held.push(Buffer.from(chunk));
      return;
    }
    this.#read(chunk);
    this.#drain();
  }

  /**
   * Hands out no more frames until `resume`, not even the rest of the chunk being read: a reader whose
   * consumer cannot keep up stops at the frame it is on, not at the end of a 64 KiB read.
   */
  pause(): void {
    this.#paused = true;
  }

  /** Hands out frames again; called from a consumer's own frame handler, the loop already running goes on. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    if (!this.#reading) this.#drain();
  }

  /** Reads what waited, in order, until paused or done; then a last line without newline, if the stream ended. */
  #drain(): void {
    while (!this.#paused && this.#held.length > 0) this.#read(this.#held.shift() as Buffer);
    if (!this.#paused && this.#ended && this.#held.length === 0) this.#finish();
  }

  get paused(): boolean {
    return this.#paused;
  }

  #read(chunk: Buffer): void {
    this.#reading = true;
    try {
      this.#readChunk(chunk);
    } finally {
      this.#reading = false;
    }
  }

  #readChunk(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      if (this.#paused) {
        this.#held.unshift(Buffer.from(chunk.subarray(start)));
        return;
      }
      const newline = chunk.indexOf(10, start);
      const end = newline === -1 ? chunk.length : newline;
      const piece = chunk.subarray(start, end);
      if (this.#discarding > 0) {
        this.#discarding += piece.length;
      } else if (this.#bufferBytes + piece.length > this.#maxBytes) {
        this.#discarding = this.#bufferBytes + piece.length;
        this.#head = Buffer.from(Buffer.concat([...this.#pieces, piece.subarray(0, HEAD_BYTES)]).subarray(0, HEAD_BYTES));
        this.#pieces = [];
        this.#bufferBytes = 0;
      } else if (piece.length > 0) {
        // Copy: the socket may reuse the chunk's memory after this callback.
        this.#pieces.push(Buffer.from(piece));
        this.#bufferBytes += piece.length;
      }
      if (newline === -1) break;
      this.#completeFrame();
      start = newline + 1;
    }
  }

  /**
   * The stream ended: a last line without its newline is still a frame (or an oversize one), not silently
   * dropped — `printf '{…}' | socat - UNIX-CONNECT:…` sends no newline.
   */
  end(): void {
    this.#ended = true;
    if (!this.#paused && !this.#reading) this.#drain();
  }

  #finish(): void {
    if (this.#discarding > 0 || this.#bufferBytes > 0) this.#completeFrame();
  }

  #completeFrame(): void {
    if (this.#discarding > 0) {
      const size = this.#discarding;
      this.#discarding = 0;
      this.#events.onOversize(size, this.#head);
      this.#head = Buffer.alloc(0);
      return;
    }
    const frame = this.#pieces.length === 1 ? (this.#pieces[0] as Buffer) : Buffer.concat(this.#pieces);
    this.#pieces = [];
    this.#bufferBytes = 0;
    // Blank lines are allowed as keep-alives and ignored.
    if (frame.some((byte) => byte !== 0x20 && byte !== 0x09 && byte !== 0x0d)) this.#events.onFrame(frame);
  }
}

/**
 * The top-level `id`, `type` and `kind` of an envelope from its first bytes, when they are there (an oversize
 * frame is discarded, but its answer should still name the request). Keys inside the payload are not taken
 * for the envelope's; a value cut off by the end of `head` is not taken at all.
 */
export function salvageIds(head: Buffer): { id: string | null; type?: string; kind?: string } {
  const found = topLevelStrings(head.toString('utf8'));
  // Only values a reply may carry: an answer that breaks the reply schema would be dropped by its reader.
  const id = messageIdSchema.safeParse(found.get('id')).success ? (found.get('id') as string) : null;
  const type = messageTypeSchema.safeParse(found.get('type')).success ? found.get('type') : undefined;
  const kind = found.get('kind');
  return { id, ...(type === undefined ? {} : { type }), ...(kind === undefined ? {} : { kind }) };
}

/** The string value of the top-level `key` of the JSON object `text` starts (see topLevelStrings). */
export function topLevelString(text: string, key: string): string | undefined {
  return topLevelStrings(text).get(key);
}

/**
 * The string-valued top-level keys of the JSON object `text` starts, each with its first value, read up to
 * where `text` is cut off. Keys inside nested values (a payload's own "id" or "host") are not taken, nor a
 * value cut off by the end of `text`. For envelopes too large to parse, of which only the head is read.
 */
export function topLevelStrings(text: string): Map<string, string> {
  const found = new Map<string, string>();
  let at = 0;
  let depth = 0;
  const skipSpace = () => {
    while (at < text.length && ' \t\r\n'.includes(text[at] as string)) at++;
  };
  /** The string starting at `at` (a quote), or undefined when it is cut off. */
  const readString = (): string | undefined => {
    let value = '';
    for (at++; at < text.length; at++) {
      const char = text[at] as string;
      if (char === '"') {
        at++;
        return value;
      }
      if (char === '\\') at++;
      value += text[at] ?? '';
    }
    return undefined;
  };
  while (at < text.length) {
    const char = text[at] as string;
    if (char !== '"') {
      if (char === '{' || char === '[') depth++;
      else if (char === '}' || char === ']') depth--;
      at++;
      continue;
    }
    const key = readString();
    if (key === undefined) break;
    if (depth !== 1) continue;
    skipSpace();
    if (text[at] !== ':') continue;
    at++;
    skipSpace();
    if (text[at] !== '"') continue;
    const value = readString();
    if (value === undefined) break;
    if (!found.has(key)) found.set(key, value);
  }
  return found;
}
