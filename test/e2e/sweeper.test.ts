/**
 * The sweeper with real leftovers (test/plugins/sweeper/sweeper-host.ts): an agent with qemu-backend and the
 * sweeper inside a network namespace, real QEMU guests, real dnsmasq and dhcp_release. Each action mode is
 * swept once; a healthy VM and everything not this host's must come out of every mode untouched.
 */
import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import test from 'node:test';
import type { EventEnvelope } from '../../core/envelope.ts';
import type { SweepResult, SweepRow } from '../../plugins/sweeper/schemas.ts';
import { runCli } from '../helpers.ts';
import {
  DELETED_VM_MAC,
  EXPIRED_MAC,
  FOREIGN_MAC,
  GHOST_MAC,
  HOST,
  STATIC_MAC,
  leaseMacs,
  makeLeftovers,
  startSweeperHost,
  type Leftovers,
  type SweeperHost,
} from '../plugins/sweeper/sweeper-host.ts';

const TIMEOUT = 300_000;
const exists = (path: string) => access(path).then(() => true, () => false);

/** Every finding the leftovers make, as [kind, target]. */
function expectedFindings(left: Leftovers): [string, string][] {
  return [
    ['orphan-process', `pid ${left.orphan.pid} (${left.orphan.id})`],
    ['dead-record', left.deadAutostart.id],
    ['dead-record', left.deadPlain.id],
    ['orphan-folder', left.bareFolder],
    ['orphan-tap', left.strayTap],
    ['stale-lease', `10.77.0.190 ${GHOST_MAC}`],
    ['stale-lease', `10.77.0.191 ${EXPIRED_MAC}`],
    ['stale-neighbour', `10.77.0.250 ${DELETED_VM_MAC}`],
  ];
}

function rows(result: SweepResult): string[][] {
  return result.actions.map((a) => [a.kind, a.target, a.step, a.outcome]).sort();
}

function row(result: SweepResult, kind: string, target: string): SweepRow {
  const found = result.actions.find((a) => a.kind === kind && a.target === target);
  assert.ok(found, `no ${kind} row for ${target} in ${JSON.stringify(result.actions, null, 1)}`);
  return found;
}

/** What no mode may change: the healthy VM, and everything another host or nobody of ours made. */
async function assertUntouched(host: SweeperHost, left: Leftovers): Promise<void> {
  const healthy = await host.vm(left.healthy.id);
  assert.deepEqual([healthy.state, healthy.desired, healthy.pid], ['running', 'running', left.healthy.pid], 'the healthy VM runs on, same process');
  assert.deepEqual(await host.tapInfo(left.healthy.tap!), { exists: true, up: true, master: 'br0' }, "the healthy VM's tap");
  const macs = await leaseMacs(host);
  assert.ok(macs.includes(left.healthy.mac), "the healthy VM's lease");
  assert.ok(macs.includes(FOREIGN_MAC), 'a lease outside the MAC prefixes');
  for (const pid of left.foreign.pids) assert.equal(await host.alive(pid), true, `look-alike process ${pid} lives`);
  assert.ok(await exists(left.foreign.folder), "another host's folder");
  assert.ok(await exists(left.foreign.file), 'a file the host did not make');
  for (const tap of left.foreign.taps) assert.equal((await host.tapInfo(tap)).exists, true, `tap ${tap}`);
  assert.ok(await exists(left.creating.folder), 'the folder of a VM being created (its creating mark holds)');
  assert.equal((await host.tapInfo(left.creating.tap)).exists, true, 'the tap of a VM being created');
  const neighbours = await host.neighbours();
  assert.ok(neighbours.some((n) => n.lladdr === STATIC_MAC && n.state?.includes('PERMANENT')), `the static neighbour entry: ${JSON.stringify(neighbours)}`);
  assert.ok(neighbours.some((n) => n.lladdr === '52:54:00:11:22:33'), 'a neighbour entry outside the MAC prefixes');
}

function assertIgnoredLookalikes(result: SweepResult, left: Leftovers): void {
  const ignored = result.ignored.map((i) => [i.kind, i.target]);
  assert.ok(ignored.some(([kind, target]) => kind === 'process' && target?.endsWith(`(cloudlet-${HOST}.impostor)`)), JSON.stringify(ignored));
  assert.ok(ignored.some(([kind, target]) => kind === 'process' && target?.endsWith('(cloudlet-otherhost.abcdefgh)')), JSON.stringify(ignored));
  assert.ok(ignored.some(([kind, target]) => kind === 'folder' && target === 'otherhost.leftover'));
  assert.ok(ignored.some(([kind, target]) => kind === 'folder' && target === left.creating.folder), JSON.stringify(ignored));
  assert.ok(ignored.some(([kind, target]) => kind === 'neighbour' && target === `10.77.0.251 ${STATIC_MAC}`));
  assert.ok(!result.actions.some((a) => left.foreign.pids.some((pid) => a.target.startsWith(`pid ${pid} `))), 'no look-alike is a finding');
}

test('sweeper — log: every kind of leftover is reported, nothing changes, and the run is published', { timeout: TIMEOUT }, async (t) => {
  const host = await startSweeperHost(t, 'log');
  const left = await makeLeftovers(host);
  const events: EventEnvelope[] = [];
  await host.client.subscribe((event) => events.push(event));

  const result = await host.sweep();
  assert.deepEqual(result.errors, []);
  assert.deepEqual(rows(result), expectedFindings(left).map(([kind, target]) => [kind, target, 'none', 'logged']).sort());
  assert.ok(result.actions.every((a) => a.action === 'log'));
  assertIgnoredLookalikes(result, left);

  assert.equal(await host.alive(left.orphan.pid), true, 'the orphan QEMU still runs');
  for (const vm of [left.deadAutostart, left.deadPlain]) assert.deepEqual([(await host.vm(vm.id)).state, (await host.vm(vm.id)).desired], ['stopped', 'running']);
  assert.ok(await exists(left.bareFolder));
  assert.deepEqual(await host.tapInfo(left.strayTap), { exists: true, up: true, master: 'br0' });
  const macs = await leaseMacs(host);
  assert.ok(macs.includes(GHOST_MAC) && macs.includes(EXPIRED_MAC), 'the stale leases are still there');
  assert.ok((await host.neighbours()).some((n) => n.lladdr === DELETED_VM_MAC));
  await assertUntouched(host, left);

  const deadline = Date.now() + 5_000;
  while (!events.some((e) => e.type === 'sweep.completed') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const event = events.find((e) => e.type === 'sweep.completed');
  assert.equal((event?.payload as SweepResult | undefined)?.runId, result.runId);
  assert.equal(result.summary.found, 8);
  assert.equal(result.counters.found['stale-lease'], 2);
});

test('sweeper — stop: the orphan QEMU is powered off (its folder kept), dead records marked stopped, the tap detached, the neighbour entry removed; leases and folders stay', { timeout: TIMEOUT }, async (t) => {
  const host = await startSweeperHost(t, 'stop');
  const left = await makeLeftovers(host);

  const result = await host.sweep();
  assert.deepEqual(result.errors, []);
  const steps = Object.fromEntries(expectedFindings(left).map(([kind, target]) => [`${kind} ${target}`, [row(result, kind, target).step, row(result, kind, target).outcome]]));
  assert.deepEqual(steps, {
    [`orphan-process pid ${left.orphan.pid} (${left.orphan.id})`]: ['power-off', 'done'],
    [`dead-record ${left.deadAutostart.id}`]: ['mark-stopped', 'done'],
    [`dead-record ${left.deadPlain.id}`]: ['mark-stopped', 'done'],
    [`orphan-folder ${left.bareFolder}`]: ['none', 'logged'],
    [`orphan-tap ${left.strayTap}`]: ['detach-tap', 'done'],
    [`stale-lease 10.77.0.190 ${GHOST_MAC}`]: ['none', 'logged'],
    [`stale-lease 10.77.0.191 ${EXPIRED_MAC}`]: ['none', 'logged'],
    [`stale-neighbour 10.77.0.250 ${DELETED_VM_MAC}`]: ['delete-neighbour', 'done'],
  });
  assert.match(row(result, 'orphan-process', `pid ${left.orphan.pid} (${left.orphan.id})`).detail ?? '', /^(powered-off|quit)$/, 'through QMP');

  assert.equal(await host.alive(left.orphan.pid), false, 'the orphan QEMU is gone');
  assert.ok(await exists(left.orphan.folder), "stop keeps the orphan's folder");
  assert.equal((await host.tapInfo(left.orphan.tap)).exists, true, "stop keeps the orphan's tap");
  for (const vm of [left.deadAutostart, left.deadPlain]) {
    const now = await host.vm(vm.id);
    assert.deepEqual([now.state, now.desired], ['stopped', 'stopped'], `${vm.id} is marked stopped, even with autostart`);
    assert.equal((await host.tapInfo(vm.tap!)).exists, false, "stop-vm removed the dead VM's tap");
  }
  assert.ok(await exists(left.bareFolder), 'stop keeps folders');
  assert.deepEqual(await host.tapInfo(left.strayTap), { exists: true, up: false, master: null });
  const macs = await leaseMacs(host);
  assert.ok(macs.includes(GHOST_MAC) && macs.includes(EXPIRED_MAC), 'stop releases no lease');
  assert.ok(!(await host.neighbours()).some((n) => n.lladdr === DELETED_VM_MAC), 'the neighbour entry is gone');
  await assertUntouched(host, left);
});

test('sweeper — reap: a dry run lists it all and changes nothing; then orphans are killed and removed, dead VMs restarted or stopped, leases released', { timeout: TIMEOUT }, async (t) => {
  const host = await startSweeperHost(t, 'reap');
  const left = await makeLeftovers(host);
  const planned: Record<string, string> = {
    'orphan-process': 'kill-and-remove',
    'orphan-folder': 'remove-folder',
    'orphan-tap': 'delete-tap',
    'stale-lease': 'release-lease',
    'stale-neighbour': 'delete-neighbour',
  };
  const stepOf = (kind: string, target: string) => (kind === 'dead-record' ? (target === left.deadAutostart.id ? 'restart' : 'mark-stopped') : planned[kind]!);

  // What an operator types: the CLI sends sweep-now {dryRun: true} and prints the planned steps as a table.
  const cli = await runCli(['sweep', '--dry-run', '--config', host.configFile], { timeoutMs: 60_000 });
  assert.equal(cli.code, 0, cli.stderr);
  for (const text of ['kill-and-remove', left.orphan.id, 'restart', left.deadAutostart.id, 'release-lease', GHOST_MAC, 'planned']) assert.ok(cli.stdout.includes(text), `"${text}" in:\n${cli.stdout}`);
  assert.equal(await host.alive(left.orphan.pid), true, 'the CLI dry run killed nothing');

  const dry = await host.sweep({ dryRun: true });
  assert.equal(dry.dryRun, true);
  assert.deepEqual(rows(dry), expectedFindings(left).map(([kind, target]) => [kind, target, stepOf(kind, target), 'planned']).sort());
  assert.equal(await host.alive(left.orphan.pid), true, 'a dry run kills nothing');
  assert.ok(await exists(left.bareFolder));
  assert.equal((await host.tapInfo(left.strayTap)).exists, true);
  assert.ok((await leaseMacs(host)).includes(GHOST_MAC));
  assert.equal((await host.vm(left.deadAutostart.id)).state, 'stopped');

  const result = await host.sweep();
  assert.deepEqual(result.errors, []);
  assert.deepEqual(rows(result), expectedFindings(left).map(([kind, target]) => [kind, target, stepOf(kind, target), 'done']).sort());
  assert.equal(row(result, 'orphan-process', `pid ${left.orphan.pid} (${left.orphan.id})`).detail, `killed; tap ${left.orphan.tap} deleted; folder removed`);

  assert.equal(await host.alive(left.orphan.pid), false);
  assert.equal(await exists(left.orphan.folder), false, "reap removes the orphan's folder");
  assert.equal((await host.tapInfo(left.orphan.tap)).exists, false, "reap removes the orphan's tap");
  const restarted = await host.vm(left.deadAutostart.id);
  assert.deepEqual([restarted.state, restarted.desired], ['running', 'running'], 'the autostart VM runs again');
  assert.notEqual(restarted.pid, left.deadAutostart.pid);
  assert.deepEqual([(await host.vm(left.deadPlain.id)).state, (await host.vm(left.deadPlain.id)).desired], ['stopped', 'stopped']);
  assert.equal(await exists(left.bareFolder), false, 'the leftover folder is gone');
  assert.equal((await host.tapInfo(left.strayTap)).exists, false, 'the leftover tap is gone');
  const macs = await leaseMacs(host);
  assert.ok(!macs.includes(GHOST_MAC), 'dnsmasq released the unknown MAC’s lease');
  assert.ok(!macs.includes(EXPIRED_MAC), 'the expired line went with dnsmasq’s rewrite');
  assert.ok(!(await host.neighbours()).some((n) => n.lladdr === DELETED_VM_MAC));
  await assertUntouched(host, left);

  // The orphan's own lease is now of a MAC that belongs to no VM: the next sweep releases it.
  const next = await host.sweep();
  const orphanLease = next.actions.find((a) => a.kind === 'stale-lease');
  assert.ok(orphanLease?.target.endsWith(left.orphan.mac), JSON.stringify(next.actions));
  assert.equal(orphanLease?.outcome, 'done');
  assert.ok(next.actions.every((a) => a.target.endsWith(left.orphan.mac) && a.outcome === 'done'), JSON.stringify(next.actions));
  assert.ok(!(await leaseMacs(host)).includes(left.orphan.mac));
  await assertUntouched(host, left);
  assert.equal(next.counters.runs, 4);
  assert.equal(next.counters.dryRuns, 2);
});
