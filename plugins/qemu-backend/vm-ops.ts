/**
 * What can be done to a VM, shared by the message handlers (in worker threads) and the start hook (in the
 * agent). Every operation is idempotent and says what it found: already running, not running, gone.
 */
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import process from 'node:process';
import { qemuError } from './errors.ts';
import { resolveImage, type BaseImage } from './images.ts';
import { ensureTap, removeTap, tapName } from './network.ts';
import type { QemuOptions } from './options.ts';
import { killQemu, runningPid, waitForExit, type QemuScan } from './processes.ts';
import { deletedRecord } from './tombstones.ts';
import { chooseAccel, qemuArgv } from './qemu-args.ts';
import { withQmp, QmpClient } from './qmp.ts';
import type { HostIdentity } from '../../core/plugin-api.ts';
import { runProgram } from './run.ts';
import { markBooted, readRecord, removeVmFolder, vmPaths, writeRecord, type VmRecord } from './state.ts';

export type VmState = 'running' | 'paused' | 'stopped';

export interface VmView {
  id: string;
  host: string;
  name: string | null;
  image: string;
  memoryMiB: number;
  vcpus: number;
  mac: string;
  network: VmRecord['network']['mode'];
  tap: string | null;
  autostart: boolean;
  state: VmState;
  desired: VmRecord['desired'];
  pid: number | null;
  createdAt: string;
}

export function viewOf(record: VmRecord, state: VmState, pid: number | undefined): VmView {
  return {
    id: record.id,
    host: record.host,
    name: record.name ?? null,
    image: record.image,
    memoryMiB: record.memoryMiB,
    vcpus: record.vcpus,
    mac: record.mac,
    network: record.network.mode,
    tap: record.network.mode === 'bridge' ? record.network.tap : null,
    autostart: record.autostart,
    state,
    desired: record.desired,
    pid: pid ?? null,
    createdAt: record.createdAt,
  };
}

/** The agent run a handler works for: its host id, and when that agent started (a restart is another run). */
export type AgentRun = Pick<HostIdentity, 'id' | 'startedAt'>;

export async function requireRecord(options: QemuOptions, id: string, agent: AgentRun): Promise<VmRecord> {
  checkOwner(id, agent.id);
  const record = await readRecord(options.stateDir, id);
  if (record) return record;
  await refuseWhileCreating(options, id, agent);
  // Read again: the create may have written vm.json and dropped its mark between the two reads above.
  const late = await readRecord(options.stateDir, id);
  if (late) return late;
  const deleted = await deletedRecord(options.stateDir, id);
  if (deleted) throw qemuError('VM_NOT_FOUND', `no VM "${id}" on this host: it was deleted at ${deleted.deletedAt}`, { vm: id, deletedAt: deleted.deletedAt });
  throw qemuError('VM_NOT_FOUND', `no VM "${id}" on this host`, { vm: id });
}

/** What create-vm writes to the VM's `creating` mark, before anything else of the VM. */
export interface CreatingMark {
  pid: number;
  /** The agent run's start (HostIdentity.startedAt): a restarted agent, even with the same pid, is another run. */
  agentStartedAt: number;
  /** When the create is over at the latest: its deadline, plus the grace a cancelled handler gets. */
  until: number;
  /**
   * The create-vm request's id. A run of the same request after its agent died finds the folder by it (the
   * VM id derives from it, vm-id.ts) and knows what it finds there is its own, to start over. Absent in
   * marks written before it was added.
   */
  request?: string;
}

/** The folder's `creating` mark as written; undefined when there is none or it is torn (its create died writing it). */
export async function readCreatingMark(options: QemuOptions, id: string): Promise<Partial<CreatingMark> | undefined> {
  const text = await readFile(vmPaths(options.stateDir, id).creating, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const mark = JSON.parse(text) as unknown;
    return typeof mark === 'object' && mark !== null ? (mark as Partial<CreatingMark>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * create-vm writes vm.json last, and a `creating` mark first. A mark of this agent run whose create may
 * still be at work means a create at work; anything else without vm.json (an agent that died mid-create
 * and was restarted, a clean-up cut short) is a leftover.
 */
export async function isBeingCreated(options: QemuOptions, id: string, agent: AgentRun): Promise<boolean> {
  return markHolds(await readCreatingMark(options, id), agent);
}

/** Whether a mark as read (readCreatingMark) is one of this agent run whose create may still be at work. */
export function markHolds(mark: Partial<CreatingMark> | undefined, agent: AgentRun): boolean {
  if (mark === undefined) return false; // none, or torn: its create died while writing it
  return mark.pid === process.pid && mark.agentStartedAt === agent.startedAt && typeof mark.until === 'number' && Date.now() < mark.until;
}

/** VM_NOT_READY (retryable) while create-vm works on `id`: a command sent on its "starting" progress. */
export async function refuseWhileCreating(options: QemuOptions, id: string, agent: AgentRun): Promise<void> {
  if (await isBeingCreated(options, id, agent)) {
    throw qemuError('VM_NOT_READY', `VM "${id}" is still being created; send the command again once create-vm has answered`, { vm: id });
  }
}

/** A VM id names its host; a command for another host's VM is a routing mistake, not "already gone". */
export function checkOwner(id: string, hostId: string): void {
  const owner = id.slice(0, id.lastIndexOf('.'));
  if (owner !== hostId) {
    throw qemuError('VM_NOT_FOUND', `VM "${id}" belongs to host "${owner}", not to "${hostId}"`, { vm: id, owner, host: hostId });
  }
}

/**
 * Starts QEMU for a recorded VM. Returns the pid; `already` when it was running. `resolved`: the record's
 * image as the caller has just resolved it (create-vm), so qemu-img is not asked about it a second time.
 * `signal`: a cancel ends a QEMU that has not finished starting (create-vm cleans up after it).
 */
export async function startVm(options: QemuOptions, record: VmRecord, resolved?: BaseImage, signal?: AbortSignal): Promise<{ pid: number; already: boolean }> {
  const paths = vmPaths(options.stateDir, record.id);
  const running = await runningPid(paths.pidfile, record.id);
  if (running !== undefined) return { pid: running, already: true };
  const image = resolved ?? (await resolveImage(options.imagesDir, record.image, options.qemuImgBinary));
  if (image.kind !== record.imageKind) {
    throw qemuError('IMAGE_INVALID', `image "${record.image}" is now a ${image.kind} image; ${record.id} was created from a ${record.imageKind} image`, { vm: record.id });
  }
  if (record.network.mode === 'bridge') await ensureTap(options.ipBinary, record.network.tap, record.network.bridge);
  try {
    // Leftovers of a QEMU that died: a stale socket would make the new one fail to bind.
    await Promise.all([rm(paths.qmp, { force: true }), rm(paths.qga, { force: true }), rm(paths.pidfile, { force: true })]);
    await mkdir(paths.dir, { recursive: true, mode: 0o750 });
    await markBooted(paths); // before the boot it marks; never fails the start (state.ts)
    const argv = qemuArgv(options, record, image, paths, await chooseAccel(options.accel));
    const result = await runProgram(argv, { timeoutMs: 60_000, signal });
    if (result.code !== 0) {
      throw qemuError('QEMU_FAILED', `QEMU did not start (exit ${result.code}): ${result.stderr.trim().slice(0, 2000)}`, { vm: record.id, exitCode: result.code });
    }
    const pid = await runningPid(paths.pidfile, record.id);
    if (pid === undefined) throw qemuError('QEMU_FAILED', `QEMU for ${record.id} exited right after starting; see ${paths.serialLog}`);
    return { pid, already: false };
  } catch (error) {
    // No QEMU holds the tap: off the bridge with it, as a stop would do (the next start makes it again). A
    // cancel may come after QEMU daemonized: then the tap is its, and stays.
    if (record.network.mode === 'bridge' && (await runningPid(paths.pidfile, record.id).catch(() => undefined)) === undefined) {
      await removeTap(options.ipBinary, record.network.tap).catch(() => undefined);
    }
    throw error;
  }
}

export type StopOutcome = 'powered-off' | 'quit' | 'killed' | 'already-stopped';

/**
 * Graceful: ACPI power button, wait up to `timeoutMs` for the guest to power off, then QMP `quit`, then
 * SIGKILL. Forced: `quit`, then SIGKILL. Says which one ended the VM.
 */
export async function stopVm(options: QemuOptions, record: VmRecord, how: { force: boolean; timeoutMs: number }): Promise<StopOutcome> {
  const paths = vmPaths(options.stateDir, record.id);
  const pid = await runningPid(paths.pidfile, record.id);
  let outcome: StopOutcome;
  if (pid === undefined) outcome = 'already-stopped';
  else {
    outcome = await endProcess(paths, pid, record.id, how);
  }
  if (record.network.mode === 'bridge') await removeTap(options.ipBinary, record.network.tap);
  await Promise.all([rm(paths.qmp, { force: true }), rm(paths.qga, { force: true }), rm(paths.pidfile, { force: true })]);
  return outcome;
}

async function endProcess(paths: { qmp: string; pidfile: string }, pid: number, id: string, how: { force: boolean; timeoutMs: number }): Promise<StopOutcome> {
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(paths.qmp);
  } catch {
    qmp = undefined; // a wedged monitor: fall through to SIGKILL
  }
  try {
    if (qmp && !how.force) {
      // If the monitor fails here (QEMU exiting, no answer), fall through to quit and SIGKILL.
      await qmp.execute('system_powerdown').catch(() => undefined);
      // The socket closes when QEMU exits; /proc is the backstop (a late-reaped process still looks alive).
      if ((await qmp.waitForClose(how.timeoutMs)) && (await waitForExit(pid, 5_000))) return 'powered-off';
    }
    if (qmp) {
      await qmp.execute('quit').catch(() => undefined);
      if (await waitForExit(pid, 5_000)) return 'quit';
    }
  } finally {
    qmp?.close();
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
  if (!(await waitForExit(pid, 5_000))) throw qemuError('QEMU_FAILED', `QEMU pid ${pid} for ${id} survived SIGKILL`);
  return 'killed';
}

/**
 * How long each QMP step of a status check (greeting, capabilities, query-status) may take. The status is
 * extra information (get-vm, the start-up reconcile): a stuck monitor must not hold either for QMP's full
 * timeouts (up to 20 s); this way at most ~3 s, and the VM is reported running without `qmpStatus`.
 */
const STATUS_CHECK_MS = 1_000;

/** `scan`: a /proc scan shared by a caller that asks about many VMs (the start-up reconcile). */
export async function queryStatus(options: QemuOptions, record: VmRecord, scan?: QemuScan): Promise<{ state: VmState; pid: number | undefined; qmpStatus?: string }> {
  const paths = vmPaths(options.stateDir, record.id);
  const pid = await runningPid(paths.pidfile, record.id, scan);
  if (pid === undefined) return { state: 'stopped', pid };
  const status = await withQmp(paths.qmp, (qmp) => qmp.execute<{ status: string; running: boolean }>('query-status', undefined, STATUS_CHECK_MS), STATUS_CHECK_MS).catch(
    () => undefined,
  );
  if (!status) return { state: 'running', pid };
  return { state: status.running ? 'running' : 'paused', pid, qmpStatus: status.status };
}

export async function setDesired(options: QemuOptions, record: VmRecord, desired: VmRecord['desired']): Promise<VmRecord> {
  const updated = { ...record, desired };
  await writeRecord(options.stateDir, updated);
  return updated;
}

/**
 * The folder (and QEMU, and tap) of a create that never finished — a failed create's own clean-up, and
 * delete-vm's for what a dead one left; says whether there was one.
 */
export async function removeLeftover(options: QemuOptions, id: string): Promise<boolean> {
  const paths = vmPaths(options.stateDir, id);
  if (!(await stat(paths.dir).then((info) => info.isDirectory(), () => false))) return false;
  await killQemu(paths.pidfile, id).catch(() => undefined);
  // Only a bridged VM had one; for the others there is nothing to remove and the error is ignored.
  await removeTap(options.ipBinary, tapName(options.tapPrefix, id)).catch(() => undefined);
  await removeVmFolder(options.stateDir, id);
  return true;
}
