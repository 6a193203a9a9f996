/**
 * A client for the QEMU guest agent socket. The agent has no greeting, and stale bytes from an earlier
 * client may sit in the channel, so every session starts with `guest-sync` and a random id.
 */
import { createConnection } from 'node:net';

/** The agent's answers are small; a longer line is a guest gone wrong, not one to buffer further. */
const MAX_LINE_BYTES = 1024 * 1024;

/** `signal` ends the call early (the caller's wait is over): it rejects at once and closes the socket. */
export async function guestAgentCall<T>(path: string, command: string, args?: Record<string, unknown>, timeoutMs = 5_000, signal?: AbortSignal): Promise<T> {
  signal?.throwIfAborted();
  const socket = createConnection(path);
  socket.setEncoding('utf8');
  let onAbort: (() => void) | undefined;
  try {
    return await new Promise<T>((resolve, reject) => {
      const syncId = Math.floor(Math.random() * 2 ** 31);
      let buffer = '';
      let synced = false;
      const timer = setTimeout(() => reject(new Error(`the guest agent did not answer "${command}" within ${timeoutMs} ms`)), timeoutMs);
      onAbort = () => {
        clearTimeout(timer);
        reject(new Error(`stopped waiting for the guest agent's answer to "${command}"`));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.on('error', (error) => {
        clearTimeout(timer);
        reject(new Error(`cannot reach the guest agent at ${path}: ${error.message}`));
      });
      // QEMU exiting closes the socket without an error: without this the call would wait for its timeout.
      // (After an answer or an error, rejecting again changes nothing.)
      socket.on('close', () => {
        clearTimeout(timer);
        reject(new Error(`the guest agent socket ${path} closed before answering "${command}"`));
      });
      // The guest writes this socket: nothing it sends may throw here (an uncaught error would end the
      // thread) or grow without bound.
      socket.on('data', (chunk: string) => {
        buffer += chunk;
        let newline: number;
        while ((newline = buffer.indexOf('\n')) !== -1) {
          const line = buffer.slice(0, newline).replace(/^\xff/, '').trim();
          buffer = buffer.slice(newline + 1);
          let parsed: unknown;
          try {
            parsed = JSON.parse(line);
          } catch {
            continue;
          }
          if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) continue;
          const message = parsed as { return?: unknown; error?: { desc?: unknown } | null };
          if (!synced) {
            if (message.return === syncId) {
              synced = true;
              socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
            }
            continue;
          }
          clearTimeout(timer);
          if (message.error) reject(new Error(`guest agent: ${typeof message.error.desc === 'string' ? message.error.desc : 'error'}`));
          else resolve(message.return as T);
          return;
        }
        if (buffer.length > MAX_LINE_BYTES) {
          clearTimeout(timer);
          reject(new Error(`the guest agent at ${path} sent a line longer than ${MAX_LINE_BYTES} bytes`));
          socket.destroy();
        }
      });
      socket.on('connect', () => socket.write(`${JSON.stringify({ execute: 'guest-sync', arguments: { id: syncId } })}\n`));
    });
  } finally {
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    socket.destroy();
  }
}
