/** The pure planner: given what a host looks like, which leftovers it finds and what each action does. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { resolveSweeperOptions, sweeperOptionsSchema, type SweeperOptions } from '../../../plugins/sweeper/options.ts';
import { planSweep, stepFor, type Inventory } from '../../../plugins/sweeper/plan.ts';
import type { Lease } from '../../../plugins/ip-discovery-dnsmasq/leases.ts';

const NOW = Date.parse('2030-01-01T12:00:00Z');
const OLD = 3_600_000;
const HOUR = 3_600;

function options(extra: Record<string, unknown> = {}, jobs: Record<string, unknown> = {}): SweeperOptions {
  return resolveSweeperOptions(
    sweeperOptionsSchema.parse({
      qemu: { stateDir: '/var/lib/cloudlet/qemu' },
      jobs: { orphans: { action: 'reap' }, leases: { action: 'reap', interface: 'br0', leaseFile: '/tmp/l' }, ...jobs },
      ...extra,
    }),
  );
}

const healthy = { id: 'h1.healthyy', mac: '02:00:00:00:00:01', tap: 'clthealthyy', autostart: false, desired: 'running' as const, createdAtMs: NOW - OLD };

function lease(address: string, mac: string | null, expiry: number, extra: Partial<Lease> = {}): Lease {
  return { family: 'ipv4', address, mac, expiry, hostname: null, clientId: null, line: 1, ...extra };
}

/** A host with one healthy VM (record, process, tap, lease, neighbour entry) and nothing else. */
function inventory(): Inventory {
  return {
    nowMs: NOW,
    state: { records: [healthy], foreign: [], unreadable: [], bareFolders: [], foreignBareFolders: [], strayFiles: [] },
    processes: {
      ours: [{ pid: 100, vmId: healthy.id, startTicks: 1, ageMs: OLD, tap: healthy.tap, mac: healthy.mac, qmpSocket: '/q' }],
      lookalikes: [],
      macsInUse: new Set([healthy.mac]),
      tapsInUse: new Set([healthy.tap]),
    },
    taps: [{ name: healthy.tap, master: 'br0', up: true, persist: true, heldBy: [100] }],
    leases: { leases: [lease('10.0.0.10', healthy.mac, NOW / 1000 + HOUR)], serverDuid: null },
    neighbours: [{ address: '10.0.0.10', family: 'ipv4', mac: healthy.mac, state: 'REACHABLE', freshness: 'fresh', ageMs: 0 }],
  };
}

const summary = (plan: ReturnType<typeof planSweep>) => plan.findings.map((f) => [f.kind, f.target, f.step]);

test('plan — a healthy VM is never a finding, in any job', () => {
  const plan = planSweep(options(), ['orphans', 'leases'], inventory());
  assert.deepEqual(plan.findings, []);
  assert.deepEqual(plan.ignored, []);
});

test('plan — every kind of leftover is found, with the step reap means for it', () => {
  const inv = inventory();
  inv.processes.ours.push({ pid: 200, vmId: 'h1.orphanxx', startTicks: 2, ageMs: OLD, tap: 'cltorphanxx', mac: '02:00:00:00:00:02', qmpSocket: null });
  inv.processes.macsInUse.add('02:00:00:00:00:02');
  inv.processes.tapsInUse.add('cltorphanxx');
  inv.state.records.push({ ...healthy, id: 'h1.deadxxxx', mac: '02:00:00:00:00:03', tap: 'cltdeadxxxx', autostart: true });
  inv.state.records.push({ ...healthy, id: 'h1.deadyyyy', mac: '02:00:00:00:00:04', tap: 'cltdeadyyyy' });
  inv.state.bareFolders.push({ id: 'h1.barexxxx', path: '/var/lib/cloudlet/qemu/h1.barexxxx', ageMs: OLD, hasDisk: true, entries: ['disk.qcow2'] });
  inv.state.strayFiles.push({ path: '/var/lib/cloudlet/qemu/h1.healthyy/vm.json.77.tmp', ageMs: OLD });
  inv.taps!.push({ name: 'cltlostxxxx', master: 'br0', up: true, persist: true, heldBy: [] });
  inv.leases!.leases.push(lease('10.0.0.20', '02:00:00:00:00:99', NOW / 1000 + HOUR), lease('10.0.0.21', '02:00:00:00:00:98', NOW / 1000 - HOUR));
  inv.neighbours!.push({ address: '10.0.0.20', family: 'ipv4', mac: '02:00:00:00:00:99', state: 'STALE', freshness: 'stale', ageMs: 1000 });

  const plan = planSweep(options(), ['orphans', 'leases'], inv);
  assert.deepEqual(summary(plan), [
    ['orphan-process', 'pid 200 (h1.orphanxx)', 'kill-and-remove'],
    ['dead-record', 'h1.deadxxxx', 'restart'],
    ['dead-record', 'h1.deadyyyy', 'mark-stopped'],
    ['orphan-folder', '/var/lib/cloudlet/qemu/h1.barexxxx', 'remove-folder'],
    ['stray-file', '/var/lib/cloudlet/qemu/h1.healthyy/vm.json.77.tmp', 'remove-file'],
    ['orphan-tap', 'cltlostxxxx', 'delete-tap'],
    ['stale-lease', '10.0.0.20 02:00:00:00:00:99', 'release-lease'],
    ['stale-lease', '10.0.0.21 02:00:00:00:00:98', 'release-lease'],
    ['stale-neighbour', '10.0.0.20 02:00:00:00:00:99', 'delete-neighbour'],
  ]);
  assert.match(plan.findings[7]!.reason, /^expired; /);
  assert.ok(plan.findings.every((f) => f.action === 'reap'));
});

test('plan — log means no step; stop means the mild step, or none where a kind has no stopped state', () => {
  assert.deepEqual(
    (['orphan-process', 'dead-record', 'orphan-folder', 'stray-file', 'orphan-tap', 'stale-lease', 'stale-neighbour'] as const).map((kind) => [
      kind,
      stepFor(kind, 'log', true),
      stepFor(kind, 'stop', true),
      stepFor(kind, 'reap', true),
      stepFor(kind, 'reap', false),
    ]),
    [
      ['orphan-process', 'none', 'power-off', 'kill-and-remove', 'kill-and-remove'],
      ['dead-record', 'none', 'mark-stopped', 'restart', 'mark-stopped'],
      ['orphan-folder', 'none', 'none', 'remove-folder', 'remove-folder'],
      ['stray-file', 'none', 'none', 'remove-file', 'remove-file'],
      ['orphan-tap', 'none', 'detach-tap', 'delete-tap', 'delete-tap'],
      ['stale-lease', 'none', 'none', 'release-lease', 'release-lease'],
      ['stale-neighbour', 'none', 'delete-neighbour', 'delete-neighbour', 'delete-neighbour'],
    ],
  );
});

test('plan — per-kind overrides win over the job action; the default action is log', () => {
  const inv = inventory();
  inv.state.bareFolders.push({ id: 'h1.barexxxx', path: '/s/h1.barexxxx', ageMs: OLD, hasDisk: true, entries: [] });
  inv.taps!.push({ name: 'cltlostxxxx', master: null, up: false, persist: true, heldBy: [] });
  const plan = planSweep(options({}, { orphans: { action: 'reap', kinds: { 'orphan-folder': 'log' } } }), ['orphans'], inv);
  assert.deepEqual(summary(plan), [
    ['orphan-folder', '/s/h1.barexxxx', 'none'],
    ['orphan-tap', 'cltlostxxxx', 'delete-tap'],
  ]);
  const defaults = resolveSweeperOptions(sweeperOptionsSchema.parse({}));
  assert.deepEqual(summary(planSweep(defaults, ['orphans'], inv)).map((row) => row[2]), ['none', 'none']);
});

test('plan — anything younger than minAgeMs is left alone and said so', () => {
  const inv = inventory();
  inv.processes.ours.push({ pid: 200, vmId: 'h1.orphanxx', startTicks: 2, ageMs: 1_000, tap: null, mac: null, qmpSocket: null });
  inv.state.records.push({ ...healthy, id: 'h1.creating', mac: '02:00:00:00:00:03', createdAtMs: NOW - 1_000 });
  inv.state.bareFolders.push({ id: 'h1.halfmade', path: '/s/h1.halfmade', ageMs: 1_000, hasDisk: false, entries: [] });
  inv.state.strayFiles.push({ path: '/s/h1.healthyy/vm.json.1.tmp', ageMs: 10 });
  const plan = planSweep(options({ minAgeMs: 60_000 }), ['orphans'], inv);
  assert.deepEqual(plan.findings, []);
  assert.deepEqual(
    plan.ignored.map((i) => [i.kind, i.target]),
    [
      ['process', 'pid 200 (h1.orphanxx)'],
      ['record', 'h1.creating'],
      ['folder', '/s/h1.halfmade'],
      ['file', '/s/h1.healthyy/vm.json.1.tmp'],
    ],
  );
  assert.ok(plan.ignored.every((i) => /younger than minAgeMs \(60000 ms\)/.test(i.reason)));
});

test('plan — a stopped VM (desired stopped) is no dead record; its tap and MAC still belong to it', () => {
  const inv = inventory();
  inv.state.records.push({ ...healthy, id: 'h1.stoppedx', mac: '02:00:00:00:00:05', tap: 'cltstoppedx', desired: 'stopped' });
  inv.taps!.push({ name: 'cltstoppedx', master: 'br0', up: false, persist: true, heldBy: [] });
  inv.leases!.leases.push(lease('10.0.0.30', '02:00:00:00:00:05', NOW / 1000 - HOUR));
  assert.deepEqual(planSweep(options(), ['orphans', 'leases'], inv).findings, []);
});

test('plan — an unreadable record protects its process, folder suffix tap, and every unknown MAC', () => {
  const inv = inventory();
  inv.state.unreadable.push('h1.brokenxx');
  inv.processes.ours.push({ pid: 300, vmId: 'h1.brokenxx', startTicks: 3, ageMs: OLD, tap: null, mac: null, qmpSocket: null });
  inv.taps!.push({ name: 'cltbrokenxx', master: 'br0', up: true, persist: true, heldBy: [] });
  inv.leases!.leases.push(lease('10.0.0.40', '02:00:00:00:00:40', NOW / 1000 + HOUR));
  const plan = planSweep(options(), ['orphans', 'leases'], inv);
  assert.deepEqual(plan.findings, []);
  assert.deepEqual(
    plan.ignored.map((i) => i.kind),
    ['record', 'leases'],
  );
});

test("plan — another host's records and folders, and look-alike processes, are never findings", () => {
  const inv = inventory();
  inv.state.foreign.push({ id: 'h2.foreignx', host: 'h2', mac: '02:00:00:00:00:50', tap: 'cltforeignx' });
  inv.state.foreignBareFolders.push('h2.somethin');
  inv.processes.lookalikes.push({ pid: 400, name: 'cloudlet-h2.abcdefgh', reason: "not this host's naming" });
  inv.taps!.push({ name: 'cltforeignx', master: 'br0', up: true, persist: true, heldBy: [] });
  inv.leases!.leases.push(lease('10.0.0.50', '02:00:00:00:00:50', NOW / 1000 + HOUR));
  const plan = planSweep(options(), ['orphans', 'leases'], inv);
  assert.deepEqual(plan.findings, []);
  assert.deepEqual(
    plan.ignored.map((i) => [i.kind, i.target]),
    [
      ['process', 'pid 400 (cloudlet-h2.abcdefgh)'],
      ['folder', 'h2.somethin'],
      ['record', 'h2.foreignx'],
    ],
  );
});

test('plan — a look-alike process named for a recorded VM keeps the record from being declared dead', () => {
  const inv = inventory();
  inv.state.records.push({ ...healthy, id: 'h1.otherdir', mac: '02:00:00:00:00:06', tap: null });
  inv.processes.lookalikes.push({ pid: 500, name: 'cloudlet-h1.otherdir', reason: 'its -pidfile is not in this host\'s state folder' });
  assert.deepEqual(planSweep(options(), ['orphans'], inv).findings, []);
});

test('plan — a tap held open or named on a command line is in use; only taps of no VM are found', () => {
  const inv = inventory();
  inv.taps!.push(
    { name: 'cltheldxxxx', master: 'br0', up: true, persist: true, heldBy: [600] },
    { name: 'cltargvxxxx', master: 'br0', up: true, persist: false, heldBy: [] },
    { name: 'cltfreexxxx', master: null, up: false, persist: true, heldBy: [] },
  );
  inv.processes.tapsInUse.add('cltargvxxxx');
  const plan = planSweep(options(), ['orphans'], inv);
  assert.deepEqual(summary(plan), [['orphan-tap', 'cltfreexxxx', 'delete-tap']]);
  assert.deepEqual(plan.ignored, [{ kind: 'tap', target: 'cltheldxxxx', reason: 'held open by pid 600' }]);
});

test('plan — leases: MACs outside the prefixes, in use by any process, or without a MAC are never touched', () => {
  const inv = inventory();
  inv.leases!.leases.push(
    lease('10.0.0.60', '52:54:00:00:00:60', NOW / 1000 - HOUR),
    lease('10.0.0.61', '02:00:00:00:00:61', NOW / 1000 + HOUR),
    { ...lease('fd00::62', null, NOW / 1000 + HOUR), family: 'ipv6' },
  );
  inv.processes.macsInUse.add('02:00:00:00:00:61');
  assert.deepEqual(planSweep(options(), ['leases'], inv).findings, []);
  const wider = options({}, { leases: { action: 'reap', interface: 'br0', macPrefixes: ['02:', '52:54:00'] } });
  assert.deepEqual(summary(planSweep(wider, ['leases'], inv)), [['stale-lease', '10.0.0.60 52:54:00:00:00:60', 'release-lease']]);
});

test('plan — neighbours: static entries are never touched; only the asked jobs are planned', () => {
  const inv = inventory();
  inv.neighbours!.push(
    { address: '10.0.0.70', family: 'ipv4', mac: '02:00:00:00:00:70', state: 'PERMANENT', freshness: 'fresh', ageMs: null },
    { address: '10.0.0.71', family: 'ipv4', mac: '02:00:00:00:00:71', state: 'REACHABLE', freshness: 'fresh', ageMs: 0 },
  );
  inv.state.bareFolders.push({ id: 'h1.barexxxx', path: '/s/h1.barexxxx', ageMs: OLD, hasDisk: false, entries: [] });
  const plan = planSweep(options(), ['leases'], inv);
  assert.deepEqual(summary(plan), [['stale-neighbour', '10.0.0.71 02:00:00:00:00:71', 'delete-neighbour']]);
  assert.deepEqual(plan.ignored.map((i) => [i.kind, i.target]), [['neighbour', '10.0.0.70 02:00:00:00:00:70']]);
});

test('plan — a lease file that does not exist is said so in the ignored list, not swept in silence', () => {
  const missing = inventory();
  missing.leases = { leases: [], serverDuid: null, missing: true };
  const plan = planSweep(options(), ['leases'], missing);
  assert.deepEqual(plan.findings, []);
  assert.deepEqual(plan.ignored.map((i) => [i.kind, i.target]), [['leases', '/tmp/l']]);
  assert.match(plan.ignored[0]?.reason ?? '', /does not exist.*leaseFile/);
});

test('plan — the tap of a VM being created (a young folder without vm.json) is not an orphan; an old one is', () => {
  // create-vm writes vm.json last: between setting up the tap and QEMU opening it, only the folder says the
  // tap is taken. Before, a sweep in that moment found an orphan tap and, set to reap, deleted it.
  const creating = inventory();
  creating.state.bareFolders.push({ id: 'h1.creating', path: '/var/lib/cloudlet/qemu/h1.creating', ageMs: 10_000, hasDisk: true, entries: ['disk.qcow2'] });
  creating.taps?.push({ name: 'cltcreating', master: 'br0', up: true, persist: true, heldBy: [] });
  assert.deepEqual(summary(planSweep(options(), ['orphans'], creating)), []);
  const leftover = inventory();
  leftover.state.bareFolders.push({ id: 'h1.creating', path: '/var/lib/cloudlet/qemu/h1.creating', ageMs: OLD, hasDisk: true, entries: ['disk.qcow2'] });
  leftover.taps?.push({ name: 'cltcreating', master: 'br0', up: true, persist: true, heldBy: [] });
  assert.deepEqual(summary(planSweep(options(), ['orphans'], leftover)), [
    ['orphan-folder', '/var/lib/cloudlet/qemu/h1.creating', 'remove-folder'],
    ['orphan-tap', 'cltcreating', 'delete-tap'],
  ]);
  // Another host's folder is ignored, and so is the tap named for it.
  const foreign = inventory();
  foreign.state.foreignBareFolders.push('h2.creatinx');
  foreign.taps?.push({ name: 'cltcreatinx', master: 'br0', up: true, persist: true, heldBy: [] });
  assert.deepEqual(summary(planSweep(options(), ['orphans'], foreign)), []);
});

test('plan — a live IPv6 lease is never released on its DUID alone; an expired one is', () => {
  // An IPv6 lease names no MAC: the one inside the client's DUID is the guest's choice, and a disk cloned from
  // a deleted VM keeps that VM's DUID. Before, the live lease of a running VM with such a disk was released.
  const inv = inventory();
  inv.leases!.leases.push(
    { ...lease('fd00::11', '02:00:00:00:00:0a', NOW / 1000 + HOUR), family: 'ipv6', clientId: '00:01:00:01:2a:00:00:00:02:00:00:00:00:0a', iaid: 7 },
    { ...lease('fd00::12', '02:00:00:00:00:0c', NOW / 1000 - HOUR), family: 'ipv6', clientId: '00:01:00:01:2a:00:00:00:02:00:00:00:00:0c', iaid: 8 },
  );
  const plan = planSweep(options({}, { leases: { action: 'reap', interface: 'br0' } }), ['leases'], inv);
  assert.deepEqual(summary(plan), [['stale-lease', 'fd00::12 02:00:00:00:00:0c', 'release-lease']]);
  assert.deepEqual(plan.ignored.map((i) => [i.kind, i.target]), [['lease', 'fd00::11 02:00:00:00:00:0a']]);
  assert.match(plan.ignored[0]?.reason ?? '', /DUID/);
});

test('plan — a folder whose creating mark still holds is create-vm at work, however old: neither it nor its tap is found', () => {
  // Before, only the folder's age told: a create that took longer than minAgeMs (a raised create-vm
  // timeout, a low minAgeMs, a slow QEMU start) had its folder and tap removed under it when set to reap.
  const slow = inventory();
  slow.state.bareFolders.push({ id: 'h1.creating', path: '/var/lib/cloudlet/qemu/h1.creating', ageMs: OLD, hasDisk: true, entries: ['creating', 'disk.qcow2'], beingCreated: true });
  slow.taps?.push({ name: 'cltcreating', master: 'br0', up: true, persist: true, heldBy: [] });
  const plan = planSweep(options(), ['orphans'], slow);
  assert.deepEqual(summary(plan), []);
  assert.deepEqual(
    plan.ignored.filter((i) => i.kind === 'folder'),
    [{ kind: 'folder', target: '/var/lib/cloudlet/qemu/h1.creating', reason: 'create-vm is at work on it (its creating mark holds)' }],
  );
});
