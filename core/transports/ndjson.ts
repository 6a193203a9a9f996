/**
 * Newline-delimited JSON framing over a byte stream, with a hard limit per frame: a peer that sends an
 * endless line costs at most `maxBytes` of memory, and the stream stays usable after the next newline.
 */
import { StringDecoder } from 'node:string_decoder';

export interface FrameReaderEvents {
  onFrame(line: string): void;
  /** A frame exceeded the limit; its bytes were discarded. */
  onOversize(size: number): void;
}

export class FrameReader {
  readonly #maxBytes: number;
  readonly #events: FrameReaderEvents;
  readonly #decoder = new StringDecoder('utf8');
  #buffer = '';
  #bufferBytes = 0;
  /** Bytes of an oversize frame seen so far; its remainder is skipped up to the next newline. */
  #discarding = 0;

  constructor(maxBytes: number, events: FrameReaderEvents) {
    this.#maxBytes = maxBytes;
    this.#events = events;
  }

  push(chunk: Uint8Array): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(10, start);
      const end = newline === -1 ? chunk.length : newline;
      const piece = chunk.subarray(start, end);
      if (this.#discarding > 0) {
        this.#discarding += piece.length;
      } else if (this.#bufferBytes + piece.length > this.#maxBytes) {
        this.#discarding = this.#bufferBytes + piece.length;
        this.#buffer = '';
        this.#bufferBytes = 0;
        this.#decoder.end();
      } else {
        this.#buffer += this.#decoder.write(piece);
        this.#bufferBytes += piece.length;
      }
      if (newline === -1) break;
      this.#completeFrame();
      start = newline + 1;
    }
  }

  #completeFrame(): void {
    if (this.#discarding > 0) {
      const size = this.#discarding;
      this.#discarding = 0;
      this.#events.onOversize(size);
      return;
    }
    const line = this.#buffer + this.#decoder.end();
    this.#buffer = '';
    this.#bufferBytes = 0;
    if (line.trim() !== '') this.#events.onFrame(line);
  }
}
