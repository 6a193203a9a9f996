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
