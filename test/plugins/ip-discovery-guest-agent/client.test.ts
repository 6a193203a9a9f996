/**
 * The guest agent client against a stand-in socket (a real guest agent is in test/e2e/ip-discovery-guest-agent.test.ts):
 * the abort signal ends a call to an agent that never answers, and the socket is closed.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import test from 'node:test';
import { guestAgentCall } from '../../../plugins/ip-discovery-guest-agent/guest-agent-client.ts';
import guestAgentStrategy from '../../../plugins/ip-discovery-guest-agent/strategy.ts';
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

/** A guest agent that answers guest-network-get-interfaces with `interfaces`. */
async function guestAnswering(t: Parameters<typeof tempDir>[0], interfaces: unknown): Promise<string> {
  const path = join(await tempDir(t, 'cloudlet-qga-'), 'qga.sock');
  await standInSocket(t, path, (socket) => {
    socket.setEncoding('utf8');
    socket.on('data', (data: string) => {
      for (const line of data.split('\n').filter(Boolean)) {
        const request = JSON.parse(line) as { execute: string; arguments?: { id: number } };
        socket.write(`${JSON.stringify({ return: request.execute === 'guest-sync' ? request.arguments?.id : interfaces })}\n`);
      }
    });
  });
  return path;
}

test('guest agent strategy — what the guest reports is checked: bad entries are skipped with a reason, good ones kept', { timeout: 30_000 }, async (t) => {
  // Before, whatever the guest wrote became an "address": terminal escapes and shell text reached replies
  // and the operator's terminal through `cloudlet vm ip`, and a malformed entry threw a TypeError that lost
  // every address of the VM.
  const mac = '52:54:00:12:34:56';
  const path = await guestAnswering(t, [
    null,
    { name: 'lo', 'hardware-address': '00:00:00:00:00:00', 'ip-addresses': [{ 'ip-address-type': 'ipv4', 'ip-address': '127.0.0.1', prefix: 8 }] },
    {
      name: 'eth0\u001b]0;pwned\u0007',
      'hardware-address': mac.toUpperCase(),
      'ip-addresses': [
        { 'ip-address-type': 'ipv4', 'ip-address': '\u001b[31m1.2.3.4; rm -rf ~', prefix: 24 },
        { 'ip-address-type': 'ipx', 'ip-address': '10.0.0.9', prefix: 24 },
        { 'ip-address-type': 'ipv6', 'ip-address': '10.0.0.9', prefix: 64 },
        'not an entry',
        { 'ip-address-type': 'ipv4', 'ip-address': 7, prefix: 24 },
        { 'ip-address-type': 'ipv4', 'ip-address': '10.0.0.5', prefix: 24 },
        { 'ip-address-type': 'ipv6', 'ip-address': '2001:db8::5', prefix: 999 },
      ],
    },
  ]);
  const warnings: { fields: Record<string, unknown>; message: string }[] = [];
  const log = { trace() {}, debug() {}, info() {}, error() {}, warn: (fields: Record<string, unknown>, message: string) => void warnings.push({ fields, message }) };
  const found = await guestAgentStrategy.discover({ vm: 'h1.abcdefgh', mac, guestAgentSocket: path }, { options: { timeoutMs: 5_000 }, signal: new AbortController().signal, log });
  assert.deepEqual(found, [
    { address: '10.0.0.5', family: 'ipv4', scope: 'global', source: 'ip-discovery-guest-agent', ageMs: 0, detail: { prefix: 24 } },
    { address: '2001:db8::5', family: 'ipv6', scope: 'global', source: 'ip-discovery-guest-agent', ageMs: 0, detail: {} },
  ]);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!.message, /^ip-discovery-guest-agent: the guest agent of h1\.abcdefgh reported 7 entries that are not what qemu-guest-agent sends; left out$/);
  const skipped = warnings[0]!.fields.skipped as string[];
  assert.deepEqual(skipped, [
    'interface #0 is null, not an object',
    "interface #2's name (a string of 14 characters) is not a printable string of at most 256 characters; left out",
    'interface #2 address #0 has "ip-address" a string of 22 characters, which is not an IPv4 address',
    'interface #2 address #1 has "ip-address-type" a string of 3 characters; allowed: "ipv4", "ipv6"',
    'interface #2 address #2 has "ip-address" a string of 8 characters, which is not an IPv6 address',
    'interface #2 address #3 is a string of 12 characters, not an object',
    'interface #2 address #4 has "ip-address" a number, which is not an IPv4 address',
  ]);
  // Nothing the guest wrote is quoted back.
  assert.doesNotMatch(JSON.stringify(warnings), /pwned|rm -rf/);
});

test('guest agent strategy — an answer that is not a list of interfaces gives no address and says why', { timeout: 30_000 }, async (t) => {
  const path = await guestAnswering(t, { interfaces: 'all of them' });
  const warnings: string[] = [];
  const log = { trace() {}, debug() {}, info() {}, error() {}, warn: (fields: Record<string, unknown>) => void warnings.push(...(fields.skipped as string[])) };
  const found = await guestAgentStrategy.discover({ vm: 'h1.abcdefgh', mac: '52:54:00:12:34:56', guestAgentSocket: path }, { options: { timeoutMs: 5_000 }, signal: new AbortController().signal, log });
  assert.deepEqual(found, []);
  assert.deepEqual(warnings, ['the answer is not a list of interfaces but an object']);
});
