/**
 * The guest agent client against a stand-in socket (a real guest agent is in test/e2e/ip-discovery-guest-agent.test.ts):
 * the abort signal ends a call to an agent that never answers, and the socket is closed.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import test from 'node:test';
import { guestAgentCall } from '../../../plugins/ip-discovery-guest-agent/guest-agent-client.ts';
import { tempDir } from '../../helpers.ts';
import { standInSocket } from '../../support/stand-in-socket.ts';

test('guest agent client — an aborted call to an agent that never answers rejects at once and closes its socket', { timeout: 30_000 }, async (t) => {
  const path = join(await tempDir(t, 'cloudlet-qga-'), 'qga.sock');
  const { clientGone } = await standInSocket(t, path);

  const cancel = new AbortController();
  setTimeout(() => cancel.abort(), 100);
  // The call's own timeout is a minute: only the signal can end it in time.
  await assert.rejects(guestAgentCall(path, 'guest-network-get-interfaces', undefined, 60_000, cancel.signal), /stopped waiting for the guest agent/);
  await clientGone;
  await assert.rejects(guestAgentCall(path, 'guest-ping', undefined, 60_000, cancel.signal), { name: 'AbortError' });
});

test('guest agent client — a socket closed before the answer (QEMU went away) rejects at once, not at the timeout', { timeout: 30_000 }, async (t) => {
  const path = join(await tempDir(t, 'cloudlet-qga-'), 'qga.sock');
  // Reads the guest-sync, then hangs up without a word, as the socket does when QEMU exits.
  await standInSocket(t, path, (socket) => socket.once('data', () => socket.end()));
  // The call's own timeout is a minute: the close must end it.
  await assert.rejects(guestAgentCall(path, 'guest-network-get-interfaces', undefined, 60_000), /closed before answering/);
});

test('guest agent client — what the guest sends is untrusted: non-object lines are skipped, an endless line is refused', { timeout: 30_000 }, async (t) => {
  // The guest writes this socket. Before, a `null` line threw inside the data listener (`null.return`):
  // uncaught, it ended the worker thread asking; and a line without end grew the buffer until memory ran out.
  const dir = await tempDir(t, 'cloudlet-qga-');
  const odd = join(dir, 'odd.sock');
  await standInSocket(t, odd, (socket) => {
    socket.setEncoding('utf8');
    socket.on('data', (data: string) => {
      for (const line of data.split('\n').filter(Boolean)) {
        const request = JSON.parse(line) as { execute: string; arguments?: { id: number } };
        const answer = request.execute === 'guest-sync' ? { return: request.arguments?.id } : { return: [{ name: 'eth0' }] };
        socket.write(`null\n7\n[]\n${JSON.stringify(answer)}\n`);
      }
    });
  });
  assert.deepEqual(await guestAgentCall(odd, 'guest-network-get-interfaces', undefined, 5_000), [{ name: 'eth0' }]);

  const endless = join(dir, 'endless.sock');
  await standInSocket(t, endless, (socket) => {
    socket.on('error', () => undefined);
    socket.resume();
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 40; i++) socket.write(chunk);
  });
  const started = Date.now();
  // Its own timeout is a minute: ending well before it can only be the refused line (a did-not-wait bound).
  await assert.rejects(guestAgentCall(endless, 'guest-network-get-interfaces', undefined, 60_000), /sent a line longer than 1048576 bytes/);
  assert.ok(Date.now() - started < 20_000, `took ${Date.now() - started} ms`);
});
