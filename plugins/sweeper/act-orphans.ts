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
import { deleteTap, detachTap, tapPattern } from './links.ts';
import type { SweeperOptions } from './options.ts';
import { isSameProcess, tapHolders, type OurProcess } from './proc-scan.ts';
import type { RecordInfo, BareFolder, StrayFile } from './state-dir.ts';
import { creatingMarkHolds, hasRecordFile } from './state-dir.ts';

export type StepResult = { outcome: 'done' | 'skipped'; detail: string };
export type Dispatch = (type: string, payload: unknown) => Promise<DispatchReply>;

const EXIT_WAIT_MS = 5_000;
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

/** `reap`: SIGKILL at once, then its tap and its folder (overlay disk included). */
export async function reapOrphan(options: SweeperOptions, orphan: OurProcess): Promise<StepResult> {
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
}

async function stillOrphan(options: SweeperOptions, orphan: OurProcess): Promise<string | undefined> {
  if (!(await isSameProcess(orphan.pid, orphan.startTicks))) return 'the process has exited meanwhile';
  if (await hasRecordFile(options.qemu.stateDir, orphan.vmId)) return 'a record for it appeared meanwhile';
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
  if (await hasRecordFile(options.qemu.stateDir, folder.id)) return skipped('a record appeared meanwhile');
  if ((await runningPid(vmPaths(options.qemu.stateDir, folder.id).pidfile, folder.id)) !== undefined) return skipped('its QEMU runs');
  if (await creatingMarkHolds(folder.path, Date.now())) return skipped('create-vm is at work on it meanwhile');
  await rm(folder.path, { recursive: true, force: true });
  return done(folder.hasDisk ? 'removed with its overlay disk' : 'removed');
}

export async function removeStrayFile(file: StrayFile): Promise<StepResult> {
  await rm(file.path, { force: true });
  return done('removed');
}

export async function settleTap(options: SweeperOptions, tap: string, remove: boolean): Promise<StepResult> {
  if (!(await tapIsFree(options, tap))) return skipped('a VM or process took it meanwhile');
  if (remove) await deleteTap(options.qemu.ipBinary, tap);
  else await detachTap(options.qemu.ipBinary, tap);
  return done(remove ? 'deleted' : 'down and off the bridge');
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
