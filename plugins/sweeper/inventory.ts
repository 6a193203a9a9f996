/**
 * Reads what the planner needs, only what the asked jobs need. The state folder and the process table are
 * the ground truth of ownership: when either cannot be read, no job plans anything. A tap list, lease file or
 * neighbour table that cannot be read only leaves out its own kinds.
 */
import type { Inventory } from './plan.ts';
import { readLeaseFile, readNeighbours } from './lease-table.ts';
import { listTaps } from './links.ts';
import type { JobName, SweeperOptions } from './options.ts';
import { scanProcesses, tapHolders } from './proc-scan.ts';
import type { JobError } from './schemas.ts';
import { scanStateDir } from './state-dir.ts';

export interface GatheredInventory {
  /** Undefined when the state folder or the process table could not be read. */
  inventory: Inventory | undefined;
  errors: JobError[];
}

export async function gatherInventory(options: SweeperOptions, hostId: string, jobs: readonly JobName[], signal: AbortSignal): Promise<GatheredInventory> {
  const errors: JobError[] = [];
  const failed = (job: JobName, what: string, error: unknown) =>
    errors.push({ job, code: 'SWEEP_INVENTORY_FAILED', message: `${what}: ${(error as Error).message}` });
  const nowMs = Date.now();
  const { qemu } = options;
  let inventory: Inventory;
  try {
    const [state, processes] = await Promise.all([
      scanStateDir(qemu.stateDir, hostId, nowMs),
      scanProcesses({ stateDir: qemu.stateDir, hostId, qemuBinary: qemu.qemuBinary }, nowMs),
    ]);
    inventory = { nowMs, state, processes };
  } catch (error) {
    for (const job of jobs) failed(job, `cannot read the state folder ${qemu.stateDir} or the process table`, error);
    return { inventory: undefined, errors };
  }

  if (jobs.includes('orphans')) {
    try {
      const taps = await listTaps(qemu.ipBinary, qemu.tapPrefix, signal);
      const holders = await tapHolders(new Set(taps.filter((t) => !inventory.processes.tapsInUse.has(t.name)).map((t) => t.name)));
      inventory.taps = taps.map((tap) => ({ ...tap, heldBy: holders.get(tap.name) ?? [] }));
    } catch (error) {
      failed('orphans', 'cannot list tap devices; taps were not swept', error);
    }
  }
  const leasesJob = options.jobs.leases;
  if (jobs.includes('leases') && leasesJob) {
    try {
      inventory.leases = await readLeaseFile(leasesJob.leaseFile);
    } catch (error) {
      failed('leases', `cannot read the lease file ${leasesJob.leaseFile}; leases were not swept`, error);
    }
    if (leasesJob.neighbours) {
      try {
        inventory.neighbours = await readNeighbours(qemu.ipBinary, leasesJob.interface, signal);
      } catch (error) {
        failed('leases', `cannot read the neighbour table of ${leasesJob.interface}; neighbours were not swept`, error);
      }
    }
  }
  return { inventory, errors };
}
