/**
 * Pure planning: what the system looks like (records, processes, taps, leases, neighbours) in, what is a
 * leftover and what each job's action does about it out. No I/O, so every safety rule is unit-tested here:
 *  - a VM with a record (readable or not, this host's or another's) owns its process, folder, tap and MAC;
 *  - a MAC or tap on any running process's command line is in use, whoever started it;
 *  - a tap some process holds open is in use;
 *  - anything younger than `minAgeMs` may be a VM being created or deleted, and is left alone;
 *  - only leases and neighbour entries of MACs with a configured prefix are looked at; static entries never.
 */
import { isExpired } from '../ip-discovery-dnsmasq/leases.ts';
import type { Lease, NeighbourEntry } from './lease-table.ts';
import type { TapInfo } from './links.ts';
import { actionFor, type FindingKind, type JobName, type SweepAction, type SweeperOptions } from './options.ts';
import type { OurProcess, ProcessScan } from './proc-scan.ts';
import type { IgnoredThing, SweepStep } from './schemas.ts';
import type { BareFolder, RecordInfo, StateDirScan, StrayFile } from './state-dir.ts';

export interface Inventory {
  nowMs: number;
  state: StateDirScan;
  processes: ProcessScan;
  /** Orphans job: taps named like ours, with the pids holding each open. */
  taps?: (TapInfo & { heldBy: number[] })[];
  /** Leases job. */
  leases?: { leases: Lease[]; serverDuid: string | null; missing?: true };
  neighbours?: NeighbourEntry[];
}

interface FindingBase {
  job: JobName;
  target: string;
  reason: string;
  action: SweepAction;
  step: SweepStep;
}

export type Finding = FindingBase &
  (
    | { kind: 'orphan-process'; process: OurProcess }
    | { kind: 'dead-record'; record: RecordInfo }
    | { kind: 'orphan-folder'; folder: BareFolder }
    | { kind: 'stray-file'; file: StrayFile }
    | { kind: 'orphan-tap'; tap: TapInfo }
    | { kind: 'stale-lease'; lease: Lease; serverDuid: string | null }
    | { kind: 'stale-neighbour'; entry: NeighbourEntry }
  );

export interface Plan {
  findings: Finding[];
  ignored: IgnoredThing[];
}

const STEPS: Record<FindingKind, Record<'stop' | 'reap', SweepStep>> = {
  'orphan-process': { stop: 'power-off', reap: 'kill-and-remove' },
  'dead-record': { stop: 'mark-stopped', reap: 'restart' },
  'orphan-folder': { stop: 'none', reap: 'remove-folder' },
  'stray-file': { stop: 'none', reap: 'remove-file' },
  'orphan-tap': { stop: 'detach-tap', reap: 'delete-tap' },
  'stale-lease': { stop: 'none', reap: 'release-lease' },
  'stale-neighbour': { stop: 'delete-neighbour', reap: 'delete-neighbour' },
};

/** The step an action means for a kind. `reap` restarts a dead VM only when it is marked autostart. */
export function stepFor(kind: FindingKind, action: SweepAction, autostart = false): SweepStep {
  if (action === 'log') return 'none';
  const step = STEPS[kind][action];
  return step === 'restart' && !autostart ? 'mark-stopped' : step;
}

export function planSweep(options: SweeperOptions, jobs: readonly JobName[], inventory: Inventory): Plan {
  const plan: Plan = { findings: [], ignored: [] };
  for (const lookalike of inventory.processes.lookalikes) {
    plan.ignored.push({ kind: 'process', target: `pid ${lookalike.pid} (${lookalike.name})`, reason: lookalike.reason });
  }
  for (const id of inventory.state.foreignBareFolders) plan.ignored.push({ kind: 'folder', target: id, reason: "another host's VM id" });
  for (const { id, host } of inventory.state.foreign) plan.ignored.push({ kind: 'record', target: id, reason: `recorded for host "${host}"` });
  for (const id of inventory.state.unreadable) plan.ignored.push({ kind: 'record', target: id, reason: 'its vm.json cannot be read: everything of this VM is left alone' });
  if (jobs.includes('orphans')) planOrphans(options, inventory, plan);
  if (jobs.includes('leases')) planLeases(options, inventory, plan);
  return plan;
}

function planOrphans(options: SweeperOptions, inventory: Inventory, plan: Plan): void {
  const { state, processes, nowMs } = inventory;
  const { minAgeMs } = options;
  const add = (finding: Omit<FindingBase, 'job' | 'action' | 'step'> & Pick<Finding, 'kind'> & Record<string, unknown>, autostart = false) => {
    const action = actionFor(options, finding.kind);
    plan.findings.push({ ...finding, job: 'orphans', action, step: stepFor(finding.kind, action, autostart) } as Finding);
  };
  const young = (kind: string, target: string) => plan.ignored.push({ kind, target, reason: `younger than minAgeMs (${minAgeMs} ms): may be a VM being created or deleted` });

  const withRecord = new Set([...state.records.map((r) => r.id), ...state.foreign.map((r) => r.id), ...state.unreadable]);
  const live = new Set(processes.ours.map((p) => p.vmId));
  // A process named for the VM that failed another check (a different stateDir spelling, another binary)
  // may still be the VM: its record is not declared dead, nor its folder bare.
  const namedLikeOurs = new Set(processes.lookalikes.map((l) => l.name.slice('cloudlet-'.length)));

  for (const process of processes.ours) {
    if (withRecord.has(process.vmId)) continue;
    const target = `pid ${process.pid} (${process.vmId})`;
    if (process.ageMs < minAgeMs) young('process', target);
    else add({ kind: 'orphan-process', target, reason: 'QEMU named for this host runs with no VM record', process });
  }
  for (const record of state.records) {
    if (record.desired !== 'running' || live.has(record.id) || namedLikeOurs.has(record.id)) continue;
    if (inventory.nowMs - record.createdAtMs < minAgeMs) young('record', record.id);
    else add({ kind: 'dead-record', target: record.id, reason: `meant to run, but its QEMU is gone${record.autostart ? ' (autostart)' : ''}`, record }, record.autostart);
  }
  for (const folder of state.bareFolders) {
    if (live.has(folder.id) || namedLikeOurs.has(folder.id)) continue;
    if (folder.beingCreated) plan.ignored.push({ kind: 'folder', target: folder.path, reason: 'create-vm is at work on it (its creating mark holds)' });
    else if (folder.ageMs < minAgeMs) young('folder', folder.path);
    else add({ kind: 'orphan-folder', target: folder.path, reason: `no vm.json and no QEMU${folder.hasDisk ? '; holds an overlay disk' : ''}`, folder });
  }
  for (const file of state.strayFiles) {
    if (file.ageMs < minAgeMs) young('file', file.path);
    else add({ kind: 'stray-file', target: file.path, reason: 'a record write that never completed', file });
  }
  if (inventory.taps) {
    const suffix = (id: string) => `${options.qemu.tapPrefix}${id.slice(id.lastIndexOf('.') + 1)}`;
    // A young bare folder is a VM being created (create-vm writes vm.json last): its tap is set up before
    // QEMU opens it, and must not be taken away in between.
    // Another host's folders are not ours to judge (they are ignored above), nor is the tap named for them.
    const creating = [...state.bareFolders.filter((folder) => folder.beingCreated || folder.ageMs < minAgeMs).map((folder) => folder.id), ...state.foreignBareFolders];
    const owned = new Set<string>([...processes.tapsInUse, ...[...withRecord, ...live, ...namedLikeOurs, ...creating].map(suffix)]);
    for (const record of [...state.records, ...state.foreign]) if (record.tap) owned.add(record.tap);
    for (const tap of inventory.taps) {
      if (owned.has(tap.name)) continue;
      if (tap.heldBy.length > 0) {
        plan.ignored.push({ kind: 'tap', target: tap.name, reason: `held open by pid ${tap.heldBy.join(', ')}` });
        continue;
      }
      add({ kind: 'orphan-tap', target: tap.name, reason: `belongs to no VM record or process${tap.master ? `; on ${tap.master}` : ''}`, tap });
    }
  }
}

function planLeases(options: SweeperOptions, inventory: Inventory, plan: Plan): void {
  const job = options.jobs.leases;
  if (!job) return;
  const { state, processes } = inventory;
  const known = new Set<string>([...state.records.map((r) => r.mac), ...state.foreign.map((r) => r.mac), ...processes.macsInUse]);
  const ours = (mac: string | null): mac is string => mac !== null && job.macPrefixes.some((prefix) => mac.startsWith(prefix)) && !known.has(mac);
  // An unreadable record's MAC is unknown: any MAC could be its, so no lease or entry is judged stale.
  if (state.unreadable.length > 0) {
    plan.ignored.push({ kind: 'leases', target: job.interface, reason: `${state.unreadable.length} VM record(s) cannot be read: their MACs are unknown, so no lease or neighbour entry is touched` });
    return;
  }
  // Not an error (a dnsmasq that has given no lease yet may not have written it), but no silent no-op either:
  // a leaseFile naming the wrong file would otherwise sweep nothing, run after run, without a word.
  if (inventory.leases?.missing) plan.ignored.push({ kind: 'leases', target: job.leaseFile, reason: 'the lease file does not exist (dnsmasq has not written it yet, or jobs.leases.leaseFile names the wrong file): no lease was swept' });
  const add = (finding: Record<string, unknown> & { kind: 'stale-lease' | 'stale-neighbour'; target: string; reason: string }) => {
    const action = actionFor(options, finding.kind);
    plan.findings.push({ ...finding, job: 'leases', action, step: stepFor(finding.kind, action) } as Finding);
  };
  for (const lease of inventory.leases?.leases ?? []) {
    if (!ours(lease.mac)) continue;
    const expired = isExpired(lease, inventory.nowMs);
    if (lease.family === 'ipv6' && !expired) {
      // The file names no MAC for an IPv6 lease: the one in the client's DUID is the guest's choice, and a disk
      // cloned from a deleted VM keeps that VM's DUID. A live lease may be a running VM's: it waits to expire.
      plan.ignored.push({ kind: 'lease', target: `${lease.address} ${lease.mac}`, reason: 'a live IPv6 lease is tied to a MAC only through its DUID, which the guest chooses (a cloned disk keeps another VM\'s): left until it expires' });
      continue;
    }
    add({
      kind: 'stale-lease',
      target: `${lease.address} ${lease.mac}`,
      reason: `${expired ? 'expired; ' : ''}its MAC belongs to no VM of this host`,
      lease,
      serverDuid: inventory.leases?.serverDuid ?? null,
    });
  }
  for (const entry of inventory.neighbours ?? []) {
    if (!ours(entry.mac)) continue;
    if (entry.state === 'PERMANENT' || entry.state === 'NOARP') {
      plan.ignored.push({ kind: 'neighbour', target: `${entry.address} ${entry.mac}`, reason: `a static (${entry.state}) entry: set by an operator` });
      continue;
    }
    add({ kind: 'stale-neighbour', target: `${entry.address} ${entry.mac}`, reason: `its MAC belongs to no VM of this host (${entry.state})`, entry });
  }
}
