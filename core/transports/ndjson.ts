/**
 * Newline-delimited JSON framing over a byte stream, with a hard limit per frame: a peer that sends an
 * endless line costs at most `maxBytes` of memory, and the stream stays usable after the next newline.
 */
import { Buffer } from 'node:buffer';

export interface FrameReaderEvents {
  /** One complete frame, without its newline. Bytes, not text: the decoder reports invalid UTF-8. */
  onFrame(frame: Buffer): void;
  /** A frame exceeded the limit; its bytes were discarded. */
  onOversize(size: number): void;
}

export class FrameReader {
  readonly #maxBytes: number;
  readonly #events: FrameReaderEvents;
  #pieces: Buffer[] = [];
  #bufferBytes = 0;
  /** Bytes of an oversize frame seen so far; its remainder is skipped up to the next newline. */
  #discarding = 0;

  constructor(maxBytes: number, events: FrameReaderEvents) {
    this.#maxBytes = maxBytes;
    this.#events = events;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(10, start);
      const end = newline === -1 ? chunk.length : newline;
      const piece = chunk.subarray(start, end);
      if (this.#discarding > 0) {
        this.#discarding += piece.length;
      } else if (this.#bufferBytes + piece.length > this.#maxBytes) {
        this.#discarding = this.#bufferBytes + piece.length;
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

  #completeFrame(): void {
    if (this.#discarding > 0) {
      const size = this.#discarding;
      this.#discarding = 0;
      this.#events.onOversize(size);
      return;
    }
    const frame = this.#pieces.length === 1 ? (this.#pieces[0] as Buffer) : Buffer.concat(this.#pieces);
    this.#pieces = [];
    this.#bufferBytes = 0;
    // Blank lines are allowed as keep-alives and ignored.
    if (frame.some((byte) => byte !== 0x20 && byte !== 0x09 && byte !== 0x0d)) this.#events.onFrame(frame);
  }
}
