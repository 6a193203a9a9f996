/**
 * The guest agent client against a stand-in socket (a real guest agent is in test/e2e/ip-discovery-guest-agent.test.ts):
 * the abort signal ends a call to an agent that never answers, and the socket is closed.
 */
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import test from 'node:test';
import { guestAgentCall } from '../../../plugins/ip-discovery-guest-agent/guest-agent-client.ts';
import { tempDir } from '../../helpers.ts';

test('guest agent client — an aborted call to an agent that never answers rejects at once and closes its socket', { timeout: 30_000 }, async (t) => {
  const path = join(await tempDir(t, 'cloudlet-qga-'), 'qga.sock');
  const sockets: Socket[] = [];
  let closed!: () => void;
  const clientGone = new Promise<void>((resolve) => (closed = resolve));
  const server = createServer((socket) => {
    sockets.push(socket);
    // Read (and ignore) what the client sends, so the client's close is seen as end of stream.
    socket.resume();
    socket.on('close', () => closed());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });

  const cancel = new AbortController();
  setTimeout(() => cancel.abort(), 100);
  // The call's own timeout is a minute: only the signal can end it in time.
  await assert.rejects(guestAgentCall(path, 'guest-network-get-interfaces', undefined, 60_000, cancel.signal), /stopped waiting for the guest agent/);
  await clientGone;
  await assert.rejects(guestAgentCall(path, 'guest-ping', undefined, 60_000, cancel.signal), { name: 'AbortError' });
});
