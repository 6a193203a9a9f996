/**
 * A unix socket server standing in for a QEMU monitor or guest agent that misbehaves (never greets, never
 * answers). It reads and ignores what clients send, unless `onConnection` takes over, so a client's close is
 * seen; `clientGone` resolves when the first client's connection has closed. Closed when the test ends.
 */
import { createServer, type Socket } from 'node:net';
import type { TestContext } from 'node:test';

export async function standInSocket(t: TestContext, path: string, onConnection: (socket: Socket) => void = (socket) => socket.resume()): Promise<{ clientGone: Promise<void> }> {
  const sockets: Socket[] = [];
  let closed!: () => void;
  const clientGone = new Promise<void>((resolve) => (closed = resolve));
  const server = createServer((socket) => {
    sockets.push(socket);
    socket.on('close', () => closed());
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return { clientGone };
}

/** What QEMU's monitor sends first. */
export const QMP_GREETING = `${JSON.stringify({ QMP: { version: {}, capabilities: [] } })}\n`;
