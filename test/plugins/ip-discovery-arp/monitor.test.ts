/** waitForNeighbourEvent with stand-in `ip monitor` programs: every outcome, and the child is always gone after. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { lineMentionsMac, waitForNeighbourEvent } from '../../../plugins/ip-discovery-arp/monitor.ts';
import { fakeIp, processAlive } from './fake-ip.ts';

const MAC = '52:54:00:12:34:56';

/** A monitor that records its pid and arguments, prints `lines` (after `delay` s) and then runs until killed. */
async function fakeMonitor(t: import('node:test').TestContext, lines: string[], delay = 0) {
  const ip = await fakeIp(t, `echo $$ > "$(dirname "$0")/pid"\necho "$@" > "$(dirname "$0")/args"\nsleep ${delay}\n${lines.map((l) => `echo '${l}'`).join('\n')}\nexec sleep 60`);
  return { ...ip, pid: async () => Number(await readFile(join(ip.dir, 'pid'), 'utf8')), args: () => readFile(join(ip.dir, 'args'), 'utf8') };
}

test('monitor — lineMentionsMac matches whole words, any case, not inside an IPv6 address', () => {
  assert.ok(lineMentionsMac('10.77.0.75 lladdr 52:54:00:12:34:56 REACHABLE', MAC));
  assert.ok(lineMentionsMac('10.77.0.75 lladdr 52:54:00:12:34:56 STALE', '52:54:00:12:34:56'.toUpperCase()));
  assert.ok(lineMentionsMac('Deleted 10.77.0.75 lladdr 52:54:00:AB:cd:EF STALE', '52:54:00:ab:cd:ef'));
  assert.ok(!lineMentionsMac('2001:52:54:00:12:34:56:1 lladdr 02:00:00:00:00:01 REACHABLE', MAC));
  assert.ok(!lineMentionsMac('10.77.0.9 FAILED', MAC));
});

test('monitor — resolves on the first line naming the MAC and kills ip monitor', async (t) => {
  const ip = await fakeMonitor(t, ['10.77.0.9 lladdr 02:00:00:00:00:09 REACHABLE', '10.77.0.75 lladdr 52:54:00:12:34:56 REACHABLE'], 0.2);
  const outcome = await waitForNeighbourEvent({ ipBinary: ip.path, bridge: 'br0', mac: MAC.toUpperCase(), timeoutMs: 10_000, signal: new AbortController().signal });
  assert.deepEqual(outcome, { kind: 'change', line: '10.77.0.75 lladdr 52:54:00:12:34:56 REACHABLE' });
  assert.equal((await ip.args()).trim(), 'monitor neigh dev br0');
  assert.equal(processAlive(await ip.pid()), false, 'the monitor process is gone');
});

test('monitor — times out when only other MACs change, and kills ip monitor', async (t) => {
  const ip = await fakeMonitor(t, ['10.77.0.9 lladdr 02:00:00:00:00:09 REACHABLE']);
  const started = performance.now();
  const outcome = await waitForNeighbourEvent({ ipBinary: ip.path, bridge: 'br0', mac: MAC, timeoutMs: 300, signal: new AbortController().signal });
  assert.deepEqual(outcome, { kind: 'timeout' });
  assert.ok(performance.now() - started >= 290);
  assert.equal(processAlive(await ip.pid()), false);
});

test('monitor — resolves as aborted when the signal fires, and kills ip monitor', async (t) => {
  const ip = await fakeMonitor(t, []);
  const controller = new AbortController();
  const waiting = waitForNeighbourEvent({ ipBinary: ip.path, bridge: 'br0', mac: MAC, timeoutMs: 10_000, signal: controller.signal });
  await new Promise((r) => setTimeout(r, 200));
  controller.abort();
  assert.deepEqual(await waiting, { kind: 'aborted' });
  assert.equal(processAlive(await ip.pid()), false);
  assert.deepEqual(await waitForNeighbourEvent({ ipBinary: ip.path, bridge: 'br0', mac: MAC, timeoutMs: 10_000, signal: AbortSignal.abort() }), { kind: 'aborted' });
});

test('monitor — unavailable when ip is missing or ends by itself (e.g. no such device)', async (t) => {
  const missing = await waitForNeighbourEvent({ ipBinary: '/nonexistent/ip', bridge: 'br0', mac: MAC, timeoutMs: 5_000, signal: new AbortController().signal });
  assert.equal(missing.kind, 'unavailable');
  assert.match(missing.kind === 'unavailable' ? missing.reason : '', /nonexistent/);
  const ip = await fakeIp(t, 'echo \'Cannot find device "br9"\' >&2; exit 1');
  const ended = await waitForNeighbourEvent({ ipBinary: ip.path, bridge: 'br9', mac: MAC, timeoutMs: 5_000, signal: new AbortController().signal });
  assert.equal(ended.kind, 'unavailable');
  assert.match(ended.kind === 'unavailable' ? ended.reason : '', /Cannot find device "br9"/);
});
