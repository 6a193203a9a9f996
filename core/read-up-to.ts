/**
 * A file's text read as a stream, given up once it passes a limit: a file named by an operator may be a
 * device that never ends (/dev/zero) or something far larger than it should be, and read whole it fills
 * memory before anything can say so. A pipe is read like a file, to its end.
 */
import { Buffer } from 'node:buffer';
import { createReadStream } from 'node:fs';

/** The text, or `tooLarge` once more than `maxBytes` came; a file that cannot be opened or read throws (ENOENT, EISDIR…). */
export async function readTextUpTo(file: string, maxBytes: number): Promise<{ text: string } | { tooLarge: true }> {
  const chunks: Buffer[] = [];
  let size = 0;
  // Leaving the loop early (the return below) closes the stream.
  for await (const chunk of createReadStream(file)) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) return { tooLarge: true };
    chunks.push(chunk as Buffer);
  }
  return { text: Buffer.concat(chunks).toString('utf8') };
}
