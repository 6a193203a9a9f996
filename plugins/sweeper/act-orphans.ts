/**
 * The orphans job's steps. Each checks again, right before acting, that the thing is still a leftover (the
 * same process by pid and start time, still no record, no holder), and says what it did.
 *
 * Records are handled through qemu-backend's own messages (get-vm, start-vm, stop-vm) via ctx.dispatch: they
 * run with qemu-backend's options and one at a time per VM with the owner's own requests, so a stop or delete
 * in flight is seen before a dead VM is started again.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import type { DispatchReply } from '../../core/plugin-api.ts';
import { runningPid } from '../qemu-backend/processes.ts';
import { QmpClient } from '../qemu-backend/qmp.ts';
import { vmPaths } from '../qemu-backend/state.ts';
import { withVmClaim } from '../qemu-backend/vm-claim.ts';
import { deleteTap, detachTap, tapPattern } from './links.ts';
import type { SweeperOptions } from './options.ts';
import { isSameProcess, tapHolders, type OurProcess } from './proc-scan.ts';
import type { RecordInfo, BareFolder, StrayFile } from './state-dir.ts';
import { creatingMarkHolds, hasRecordFile } from './state-dir.ts';

export type StepResult = { outcome: 'done' | 'skipped'; detail: string };
export type Dispatch = (type: string, payload: unknown) => Promise<DispatchReply>;

const EXIT_WAIT_MS = 5_000;
/** How long a step waits for a claim on its VM id that create-vm or delete-vm holds; the next sweep tries again. */
const CLAIM_WAIT_MS = 2_000;
const done = (detail: string): StepResult => ({ outcome: 'done', detail });
const skipped = (detail: string): StepResult => ({ outcome: 'skipped', detail });

/** `stop`: power off through the guest, then QMP quit, then SIGKILL; the folder and tap stay. */
export async function powerOffOrphan(options: SweeperOptions, orphan: OurProcess): Promise<StepResult> {
  const why = await stillOrphan(options, orphan);
  if (why) return skipped(why);
  const timeoutMs = options.jobs.orphans?.stopTimeoutMs ?? 60_000;
  let qmp: QmpClient | undefined;
  if (orphan.qmpSocket) qmp = await QmpClient.connect(orphan.qmpSocket).catch(() => undefined);
  try {
    if (qmp) {
      await qmp.execute('system_powerdown').catch(() => undefined);
      if ((await qmp.waitForClose(timeoutMs)) && (await waitGone(orphan, EXIT_WAIT_MS))) return done('powered-off');
      await qmp.execute('quit').catch(() => undefined);
      if (await waitGone(orphan, EXIT_WAIT_MS)) return done('quit');
    } else {
      // No monitor to ask: SIGTERM makes QEMU exit cleanly ("terminating on signal").
      signal(orphan.pid, 'SIGTERM');
      if (await waitGone(orphan, timeoutMs)) return done('terminated');
    }
  } finally {
    qmp?.close();
  }
  await kill(orphan);
  return done('killed');
}

/** `reap`: SIGKILL at once, then its tap and its folder (overlay disk included), under the claim on its id. */
export async function reapOrphan(options: SweeperOptions, orphan: OurProcess): Promise<StepResult> {
  return underClaim(options, orphan.vmId, async () => {
    const why = await stillOrphan(options, orphan);
    if (why) return skipped(why);
    await kill(orphan);
    const parts = ['killed'];
    if (orphan.tap && tapPattern(options.qemu.tapPrefix).test(orphan.tap) && (await tapIsFree(options, orphan.tap))) {
      await deleteTap(options.qemu.ipBinary, orphan.tap);
      parts.push(`tap ${orphan.tap} deleted`);
    }
    if (!(await hasRecordFile(options.qemu.stateDir, orphan.vmId))) {
      await rm(join(options.qemu.stateDir, orphan.vmId), { recursive: true, force: true });
      parts.push('folder removed');
    }
    return done(parts.join('; '));
  });
}

/**
 * Runs a step that judges a VM's folder or tap and then removes it under the claim on the VM's id
 * (qemu-backend's vm-claim.ts), which create-vm takes while it takes over an id and delete-vm while it removes
 * a leftover: none of them acts between another's check and act. A claim held past CLAIM_WAIT_MS skips the step.
 */
async function underClaim(options: SweeperOptions, id: string, step: () => Promise<StepResult>): Promise<StepResult> {
  const claimed = await withVmClaim(options.qemu.stateDir, id, 'sweeper', { waitMs: CLAIM_WAIT_MS }, step);
  return claimed.ran ? claimed.value : skipped(`${claimed.heldBy} is at work on ${id} meanwhile`);
}

async function stillOrphan(options: SweeperOptions, orphan: OurProcess): Promise<string | undefined> {
  if (!(await isSameProcess(orphan.pid, orphan.startTicks))) return 'the process has exited meanwhile';
  if (await hasRecordFile(options.qemu.stateDir, orphan.vmId)) return 'a record for it appeared meanwhile';
  // A create of the request that left it has taken the id over: it ends this QEMU itself.
  if (await creatingMarkHolds(join(options.qemu.stateDir, orphan.vmId), Date.now())) return 'create-vm is at work on it meanwhile';
  return undefined;
}

async function kill(orphan: OurProcess): Promise<void> {
  signal(orphan.pid, 'SIGKILL');
  if (!(await waitGone(orphan, EXIT_WAIT_MS))) throw new Error(`pid ${orphan.pid} survived SIGKILL`);
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

async function waitGone(orphan: OurProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (await isSameProcess(orphan.pid, orphan.startTicks)) {
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
}

/** A qemu-backend message that failed: its code is kept in the row (SWEEPER.md, "Errors"). */
export function messageFailed(message: string, code: string): Error & { code: string; fromMessage: true } {
  return Object.assign(new Error(message), { code, fromMessage: true as const });
}

/** A dead record: confirmed through qemu-backend (serialized with the VM's other messages), then stopped or started. */
export async function settleDeadRecord(dispatch: Dispatch | undefined, record: RecordInfo, restart: boolean): Promise<StepResult> {
  if (!dispatch) throw new Error("records are changed through qemu-backend's messages, which only the agent's main thread can send");
  const current = await dispatch('get-vm', { vm: record.id });
  if (!current.ok) {
    if (current.error.code === 'VM_NOT_FOUND') return skipped('deleted meanwhile');
    if (current.error.code === 'VM_NOT_READY') return skipped('being created again meanwhile');
    throw messageFailed(`get-vm: ${current.error.message}`, current.error.code);
  }
  const view = current.result as { state?: string; desired?: string };
  if (view.state !== 'stopped') return skipped(`qemu-backend reports it ${view.state ?? 'in an unknown state'}`);
  if (view.desired !== 'running') return skipped('marked stopped meanwhile');
  const reply = restart ? await dispatch('start-vm', { vm: record.id }) : await dispatch('stop-vm', { vm: record.id, force: true });
  if (!reply.ok) throw messageFailed(`${restart ? 'start-vm' : 'stop-vm'}: ${reply.error.message}`, reply.error.code);
  const pid = (reply.result as { pid?: number | null }).pid;
  return done(restart ? `started again (pid ${pid ?? '?'})` : 'marked stopped');
}

export async function removeBareFolder(options: SweeperOptions, folder: BareFolder): Promise<StepResult> {
  return underClaim(options, folder.id, async () => {
    if (await hasRecordFile(options.qemu.stateDir, folder.id)) return skipped('a record appeared meanwhile');
    if ((await runningPid(vmPaths(options.qemu.stateDir, folder.id).pidfile, folder.id)) !== undefined) return skipped('its QEMU runs');
    if (await creatingMarkHolds(folder.path, Date.now())) return skipped('create-vm is at work on it meanwhile');
    await rm(folder.path, { recursive: true, force: true });
    return done(folder.hasDisk ? 'removed with its overlay disk' : 'removed');
  });
}

export async function removeStrayFile(file: StrayFile): Promise<StepResult> {
  await rm(file.path, { force: true });
  return done('removed');
}

/** `hostId`: the tap is named for this host's VM id with the same 8 letters, whose claim the step takes. */
export async function settleTap(options: SweeperOptions, hostId: string, tap: string, remove: boolean): Promise<StepResult> {
  return underClaim(options, `${hostId}.${tap.slice(options.qemu.tapPrefix.length)}`, async () => {
    if (!(await tapIsFree(options, tap))) return skipped('a VM or process took it meanwhile');
    if (remove) await deleteTap(options.qemu.ipBinary, tap);
    else await detachTap(options.qemu.ipBinary, tap);
    return done(remove ? 'deleted' : 'down and off the bridge');
  });
}

/** No record names the tap's VM suffix, no VM with that suffix is being created, and no process holds it open. */
async function tapIsFree(options: SweeperOptions, tap: string): Promise<boolean> {
  const suffix = tap.slice(options.qemu.tapPrefix.length);
  const names = await readdir(options.qemu.stateDir).catch(() => [] as string[]);
  for (const name of names.filter((n) => n.endsWith(`.${suffix}`))) {
    if (await hasRecordFile(options.qemu.stateDir, name)) return false;
    // A folder without vm.json changed within minAgeMs, or with a creating mark that holds: create-vm is at
    // work (it writes vm.json last).
    const folder = await stat(join(options.qemu.stateDir, name)).catch(() => undefined);
    if (folder?.isDirectory() && Date.now() - folder.mtimeMs < options.minAgeMs) return false;
    if (folder?.isDirectory() && (await creatingMarkHolds(join(options.qemu.stateDir, name), Date.now()))) return false;
  }
  return (await tapHolders(new Set([tap]))).size === 0;
}
