import assert from 'node:assert/strict';
import { mkdir, open, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { waitForLeaseFileChange } from '../../../plugins/ip-discovery-dnsmasq/lease-watch.ts';
import { tempDir } from '../../helpers.ts';

const LEASE = `${Math.floor(Date.now() / 1000) + 3600} 52:54:00:aa:bb:01 10.77.0.11 * *\n`;

/** Replaces the file the way many writers do: a temp file renamed over it. Returns when the rename returned. */
async function replaceByRename(file: string, text: string): Promise<number> {
  const temp = `${file}.tmp`;
  await writeFile(temp, text);
  await rename(temp, file);
  return performance.now();
}

function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
  ]).finally(() => clearTimeout(timer));
}

test('lease watch — a rename over the file resolves "changed" within milliseconds (latency printed)', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'dnsmasq.leases');
  await writeFile(file, '');
  const latencies: number[] = [];
  for (let round = 0; round < 20; round++) {
    const waiting = waitForLeaseFileChange(file, { timeoutMs: 5_000 });
    // Let the watch be set up before the write, as a caller that waits and then gets a lease would.
    await new Promise((resolve) => setTimeout(resolve, 5));
    const renamedAt = await replaceByRename(file, LEASE);
    assert.equal(await waiting, 'changed');
    latencies.push(performance.now() - renamedAt);
  }
  latencies.sort((a, b) => a - b);
  const median = latencies[Math.floor(latencies.length / 2)]!;
  const worst = latencies[latencies.length - 1]!;
  t.diagnostic(`rename → waitForChange resolved: median ${median.toFixed(1)} ms, worst ${worst.toFixed(1)} ms over ${latencies.length} rounds (budget 100 ms)`);
});

test('lease watch — an in-place rewrite (truncate, then write, as dnsmasq does) resolves "changed"', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'dnsmasq.leases');
  await writeFile(file, 'old\n');
  const waiting = waitForLeaseFileChange(file, { timeoutMs: 5_000 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  const handle = await open(file, 'r+');
  await handle.truncate(0);
  await handle.write(LEASE, 0);
  await handle.close();
  assert.equal(await waiting, 'changed');
});

test('lease watch — a file created after the wait began resolves "changed"', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'not-yet.leases');
  const waiting = waitForLeaseFileChange(file, { timeoutMs: 5_000 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  await writeFile(file, LEASE);
  assert.equal(await waiting, 'changed');
});

test('lease watch — changes to other files in the folder are not a change; the timeout resolves "timeout"', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'dnsmasq.leases');
  await writeFile(file, '');
  const started = performance.now();
  const waiting = waitForLeaseFileChange(file, { timeoutMs: 300 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  await writeFile(join(dir, 'other.leases'), LEASE);
  await replaceByRename(join(dir, 'dnsmasq.leases.bak'), LEASE);
  assert.equal(await waiting, 'timeout');
  assert.ok(performance.now() - started >= 290);
});

test('lease watch — abort resolves "aborted" at once, also when aborted before the call', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'dnsmasq.leases');
  const controller = new AbortController();
  const waiting = waitForLeaseFileChange(file, { timeoutMs: 60_000, signal: controller.signal });
  controller.abort();
  assert.ok(await settledWithin(waiting, 1_000));
  assert.equal(await waiting, 'aborted');
  assert.equal(await waitForLeaseFileChange(file, { timeoutMs: 60_000, signal: AbortSignal.abort() }), 'aborted');
});

test('lease watch — a folder that does not exist cannot be watched: the wait ends at the timeout, quietly', async (t) => {
  const dir = await tempDir(t);
  const errors: Error[] = [];
  const outcome = await waitForLeaseFileChange(join(dir, 'missing', 'dnsmasq.leases'), { timeoutMs: 100, onWatchError: (e) => errors.push(e) });
  assert.equal(outcome, 'timeout');
  assert.deepEqual(errors, []);
});

test('lease watch — a lease file that is a symlink: a write to its target resolves "changed"', { timeout: 10_000 }, async (t) => {
  // Before, only the link's folder was watched: a write in the target's folder was never seen, and waiters
  // fell back to their re-check tick.
  const dir = await tempDir(t);
  await mkdir(join(dir, 'real'));
  await mkdir(join(dir, 'links'));
  const target = join(dir, 'real', 'dnsmasq.leases');
  await writeFile(target, '');
  const link = join(dir, 'links', 'dnsmasq.leases');
  await symlink(target, link);
  const waiting = waitForLeaseFileChange(link, { timeoutMs: 3_000 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  await writeFile(target, LEASE);
  assert.equal(await waiting, 'changed');
});
