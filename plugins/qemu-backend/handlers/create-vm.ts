import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import process from 'node:process';
import { Buffer } from 'node:buffer';
import { defineHandler, type HandlerContext } from '../../../core/plugin-api.ts';
import { qemuError } from '../errors.ts';
import { createOverlay, resolveImage } from '../images.ts';
import { randomMac, removeTap, tapName } from '../network.ts';
import { qemuOptionsSchema, type QemuOptions } from '../options.ts';
import { createVmPayload, VM_ID_PATTERN } from '../schemas.ts';
import { hasRecordFile, listRecords, removeVmFolder, vmPaths, writeRecord, type VmRecord } from '../state.ts';
import { killQemu, runningPid } from '../processes.ts';
import { deletedByRequest, deletedIds, deletedRecord } from '../tombstones.ts';
import { randomVmId, vmIdForRequest } from '../vm-id.ts';
import { claimWaitMs, withVmClaim } from '../vm-claim.ts';
import { markHolds, queryStatus, readCreatingMark, removeLeftover, startVm, viewOf, type AgentRun, type CreatingMark } from '../vm-ops.ts';

/**
 * Added to the deadline and the pool's cancelGraceMs in the `creating` mark: the timers that cancel the
 * handler and then stop its thread fire late on a loaded host, and a thread takes a moment to stop.
 */
const MARK_SLACK_MS = 10_000;
/**
 * How long a create waits for a claim on its VM id (vm-claim.ts) before it answers VM_NOT_READY: longer than
 * a delete or a sweep of a leftover takes (a QEMU killed and awaited, a folder removed).
 */
const CLAIM_WAIT_MS = 15_000;
/** How long a failed create waits for the claim to remove its folder: whoever holds it finds the mark and lets go at once. */
const CLEAN_UP_CLAIM_WAIT_MS = 5_000;
/** The same after a cancel, well inside the cancel grace (1 s by default) that is all the thread has left. */
const CLEAN_UP_CLAIM_WAIT_CANCELLED_MS = 250;
/** How long that claim holds if the thread is stopped with it: a mark and a folder removed take moments. */
const CLEAN_UP_HOLD_MS = 15_000;

type CreateVmPayload = ReturnType<typeof createVmPayload.parse>;

export default defineHandler(createVmPayload, qemuOptionsSchema, async (payload, ctx) => {
  const options = ctx.options;
  const records = await listRecords(options.stateDir);
  // This request ran here before (redelivered after the agent died, or sent again with the same id): its VM
  // is the answer, checked before the limits, which that VM itself may now fill.
  const earlier = records.find((record) => record.request === ctx.message.id);
  if (earlier) return answerAgain(options, earlier, payload, ctx.message.id);
  await refuseIfDeleted(options, ctx.host.id, ctx.message.id);
  ctx.progress('allocating', { image: payload.image });
  const { limits } = options;
  if (payload.memory > limits.maxMemoryMiB || payload.vcpus > limits.maxVcpus) {
    throw qemuError('VM_LIMIT', `a VM on host ${ctx.host.id} may have at most ${limits.maxMemoryMiB} MiB and ${limits.maxVcpus} vCPUs; asked for ${payload.memory} MiB and ${payload.vcpus} vCPU${payload.vcpus === 1 ? '' : 's'}`, {
      memory: payload.memory,
      vcpus: payload.vcpus,
      maxMemoryMiB: limits.maxMemoryMiB,
      maxVcpus: limits.maxVcpus,
    });
  }
  const noRoom = noRoomFor(payload.memory, records, limits, ctx.host.id);
  if (noRoom) throw noRoom;
  const image = await resolveImage(options.imagesDir, payload.image, options.qemuImgBinary);
  const mode = payload.network ?? options.network.mode;
  if (mode === 'bridge' && options.network.mode !== 'bridge') {
    // NO_CAPACITY, not VM_LIMIT: an any-host create moves on to a host that has a bridge.
    throw qemuError('NO_CAPACITY', `host ${ctx.host.id} has no bridge configured (network.mode is "${options.network.mode}"), so it cannot give a VM a bridged network`, {
      network: mode,
      hint: `leave out the bridged network (its VMs get network mode "${options.network.mode}"), or send the create to a host whose qemu-backend has network.mode "bridge"`,
    });
  }
  // vm.json is written last. Until this create answers, no other command acts on the VM: a stop or delete
  // sent on the "starting" progress finds the `creating` mark and answers VM_NOT_READY, instead of racing
  // the create (and writing a record back into a folder the failed create removes). A folder without
  // vm.json is left alone by the sweeper for minAgeMs, and reported after that: what an agent that died
  // mid-create leaves behind (delete-vm removes it too).
  const { signal } = ctx;
  // Until the deadline this handler sees (its pool's timeout or the caller's, the earlier), plus the grace a
  // cancelled handler gets before its thread is stopped (the pool's cancelGraceMs, up to 600 s), plus slack:
  // after that no create can still be at work, whatever happened to this one.
  const mark: CreatingMark = { pid: process.pid, agentStartedAt: ctx.host.startedAt, until: ctx.message.deadline + ctx.message.cancelGraceMs + MARK_SLACK_MS, request: ctx.message.id };
  const id = await claimId(options, ctx, mark);
  const paths = vmPaths(options.stateDir, id);
  const now = new Date().toISOString();
  const network: VmRecord['network'] =
    mode === 'bridge' && options.network.mode === 'bridge' ? { mode, bridge: options.network.bridge, tap: tapName(options.tapPrefix, id) } : mode === 'user' ? { mode } : { mode: 'none' };
  const record: VmRecord = {
    v: 1,
    id,
    host: ctx.host.id,
    ...(payload.name === undefined ? {} : { name: payload.name }),
    image: payload.image,
    imageKind: image.kind,
    memoryMiB: payload.memory,
    vcpus: payload.vcpus,
    mac: randomMac(new Set(records.map((r) => r.mac))),
    network,
    autostart: payload.autostart,
    desired: 'running',
    createdAt: now,
    updatedAt: now,
    request: ctx.message.id,
  };
  try {
    if (image.kind === 'disk') await createOverlay(options.qemuImgBinary, image, paths.disk, signal);
    signal.throwIfAborted();
    ctx.progress('starting', { vm: id });
    const { pid } = await startVm(options, record, image, signal);
    signal.throwIfAborted();
    await writeRecord(options.stateDir, record);
    await rm(paths.creating, { force: true });
    ctx.log.info({ vm: id, pid, image: payload.image }, 'VM created and running');
    ctx.progress('running', { vm: id, pid });
    return { ...viewOf(record, 'running', pid), already: false };
  } catch (error) {
    await cleanUp(options, record, signal, ctx.log);
    throw error;
  }
});

/**
 * Leaves nothing half-made behind: no QEMU (it may have started before a cancel), no tap, no folder. A
 * cancel (deadline, timeout, shutdown) leaves only cancelGraceMs (1 s) for this, and the disk goes anyway:
 * QEMU is killed outright, no QMP.
 *
 * While the `creating` mark stands, no one else acts on this folder (a rerun, a delete or a sweep finds it
 * and answers or skips at once), so what may take long — QEMU's end, the tap — goes first, outside any
 * claim. The mark and the folder then go together under the claim on the id: once the mark is gone, a run
 * of this same request (sent again after a TIMEOUT) takes the folder for a leftover and begins afresh in
 * it, and a removal outside the claim could take its new folder. The claim is held for moments, and set to
 * go stale soon (CLEAN_UP_HOLD_MS) in case the cancel grace ends this thread while it holds it. When the
 * claim stays held, or the thread is stopped first, the mark and folder stay: the mark holds until its
 * time, and then whoever comes removes the leftover.
 */
async function cleanUp(options: QemuOptions, record: VmRecord, signal: AbortSignal, log: HandlerContext['log']): Promise<void> {
  const { id } = record;
  const paths = vmPaths(options.stateDir, id);
  try {
    await killQemu(paths.pidfile, id).catch(() => undefined);
    if (record.network.mode === 'bridge') await removeTap(options.ipBinary, record.network.tap).catch(() => undefined);
    const wait = { waitMs: signal.aborted ? CLEAN_UP_CLAIM_WAIT_CANCELLED_MS : CLEAN_UP_CLAIM_WAIT_MS, holdMs: CLEAN_UP_HOLD_MS };
    const outcome = await withVmClaim(options.stateDir, id, 'create-vm', wait, async () => {
      await rm(paths.creating, { force: true });
      await removeVmFolder(options.stateDir, id);
    });
    if (!outcome.ran) log.warn({ vm: id, heldBy: outcome.heldBy }, 'the failed create could not remove its folder: its VM id is claimed; the leftover stays until its mark runs out');
  } catch (error) {
    // The create's own error is the answer; this one is the operator's.
    log.warn({ vm: id, err: error }, 'the failed create could not remove its folder; the leftover stays for delete-vm or the sweeper');
  }
}

/**
 * The VM's id, its folder made and the `creating` mark in it, under the claim on the id this request derives
 * (vm-claim.ts): a delete-vm or the sweeper removing what an earlier run of this request left there either
 * finishes first, or finds the mark. The deletion is checked again under the claim: a delete of the
 * leftover that went first leaves a tombstone, and this create must not go on as if it had not happened.
 */
async function claimId(options: QemuOptions, ctx: HandlerContext<QemuOptions>, mark: CreatingMark): Promise<string> {
  const requestId = ctx.message.id;
  const derived = vmIdForRequest(ctx.host.id, requestId);
  const claimed = await withVmClaim(options.stateDir, derived, 'create-vm', { waitMs: claimWaitMs(ctx.message.deadline, CLAIM_WAIT_MS), signal: ctx.signal }, async () => {
    await refuseIfDeleted(options, ctx.host.id, requestId);
    const id = await idForRequest(options, ctx.host, requestId, ctx.log);
    const paths = vmPaths(options.stateDir, id);
    if (Buffer.byteLength(paths.qmp) >= 108) {
      throw qemuError('VM_LIMIT', `the QMP socket path for ${id} would be longer than 107 bytes; use a shorter stateDir or host id`);
    }
    try {
      await mkdir(paths.dir, { recursive: true, mode: 0o750 });
      await writeFile(paths.creating, JSON.stringify(mark));
    } catch (error) {
      await removeLeftover(options, id);
      throw error;
    }
    return id;
  });
  if (claimed.ran) return claimed.value;
  throw qemuError('VM_NOT_READY', `VM ${derived}, which request ${requestId} leads to, is being worked on by ${claimed.heldBy}; send the request again shortly`, {
    vm: derived,
    heldBy: claimed.heldBy,
  });
}

/**
 * The VM an earlier run of this request made, as it is now, with `already`. A request id sent again with
 * other settings is a mistake of the sender's (an id is never reused for another request): answering with a
 * VM it did not ask for would hide it, so it is REQUEST_ID_REUSED, naming what differs.
 */
async function answerAgain(options: QemuOptions, record: VmRecord, payload: CreateVmPayload, requestId: string) {
  const asked: [string, unknown, unknown][] = [
    ['image', payload.image, record.image],
    ['memory', payload.memory, record.memoryMiB],
    ['vcpus', payload.vcpus, record.vcpus],
    ['name', payload.name ?? null, record.name ?? null],
    ['autostart', payload.autostart, record.autostart],
    // Without `network` the host's mode applied, which its config may have changed since.
    ['network', payload.network ?? record.network.mode, record.network.mode],
  ];
  const differs = asked.filter(([, now, then]) => now !== then);
  if (differs.length > 0) {
    const said = differs.map(([field, now, then]) => `${field} ${shown(now)} (made with ${shown(then)})`).join(', ');
    throw qemuError('REQUEST_ID_REUSED', `request ${requestId} made VM ${record.id} already, with other settings: ${said}; give a new request a new id`, {
      vm: record.id,
      request: requestId,
      fields: differs.map(([field]) => field),
    });
  }
  const { state, pid } = await queryStatus(options, record);
  return { ...viewOf(record, state, pid), already: true, hint: `request ${requestId} made this VM already (${record.createdAt}); nothing was done` };
}

/**
 * A request whose VM was made and then deleted: running it again would make a new VM, under the deleted
 * one's id if that was the derived one, where a late retry of the old VM's delete would reach it. Found by
 * request (tombstones.ts), or at the derived id by a tombstone that does not say which request made its VM
 * (a record that could not be read, a leftover without a mark): another request leads there only by a hash
 * collision.
 */
async function refuseIfDeleted(options: QemuOptions, host: string, requestId: string): Promise<void> {
  const byRequest = await deletedByRequest(options.stateDir, requestId);
  const derived = vmIdForRequest(host, requestId);
  const atDerived = byRequest ? undefined : await deletedRecord(options.stateDir, derived);
  const deleted = byRequest ?? (atDerived?.request === undefined ? atDerived : undefined);
  if (!deleted) return;
  throw qemuError('REQUEST_ID_REUSED', `request ${requestId} made VM ${deleted.vm}, which was deleted at ${deleted.deletedAt}; a new VM needs a new request id`, {
    vm: deleted.vm,
    request: requestId,
    deletedAt: deleted.deletedAt,
  });
}

/**
 * The new VM's id: the one derived from the request (vm-id.ts) while it is free, or while what holds it is a
 * leftover: a folder without vm.json and without a create at work, which a run of this request left (its
 * agent died mid-create, or its clean-up was cut short by the cancel grace; another request leads to the
 * same id only by a hash collision). The leftover goes first, with any QEMU it still has. A folder with a
 * vm.json, usable or not, is a VM's and is never touched: then, or when a create of another request is at
 * work there, or when a deleted VM had the id (tombstones.ts), the id is random.
 */
async function idForRequest(options: QemuOptions, agent: AgentRun, requestId: string, log: HandlerContext['log']): Promise<string> {
  const folders = new Set((await readdir(options.stateDir).catch(() => [] as string[])).filter((name) => VM_ID_PATTERN.test(name)));
  // A deleted VM's id is never given out again (tombstones.ts): it counts as taken.
  const taken = new Set([...folders, ...(await deletedIds(options.stateDir))]);
  const derived = vmIdForRequest(agent.id, requestId);
  if (!taken.has(derived)) return derived;
  if (!folders.has(derived)) return randomVmId(agent.id, taken);
  const paths = vmPaths(options.stateDir, derived);
  // A record of this request would have answered above (answerAgain): any vm.json here is another VM's, or
  // one that cannot be read, whose VM may well be running.
  if (await hasRecordFile(options.stateDir, derived)) return randomVmId(agent.id, taken);
  const mark = await readCreatingMark(options, derived);
  if (markHolds(mark, agent)) {
    if (mark?.request !== requestId) return randomVmId(agent.id, taken);
    throw qemuError('VM_NOT_READY', `request ${requestId} is still creating VM ${derived}; send it again once that has answered`, { vm: derived });
  }
  log.warn({ vm: derived }, 'a run of this request left the VM half-made (its agent stopped mid-create, or its clean-up was cut short); removing it and starting over');
  await killQemu(paths.pidfile, derived, 5_000);
  const survivor = await runningPid(paths.pidfile, derived);
  if (survivor !== undefined) {
    throw qemuError('VM_NOT_READY', `the QEMU (pid ${survivor}) that an earlier run of request ${requestId} left for ${derived} has not exited after SIGKILL; send the request again shortly`, { vm: derived });
  }
  await removeLeftover(options, derived);
  return derived;
}

/**
 * NO_CAPACITY when this host has no room for the VM now, or never will (more memory than its total): the
 * code lets the routing hand an any-host create to another host. The message says what was asked and what
 * is free: "is full" misled when the host had room, only not that much.
 */
export function noRoomFor(memory: number, records: Pick<VmRecord, 'memoryMiB'>[], limits: QemuOptions['limits'], hostId: string): ReturnType<typeof qemuError> | undefined {
  const usedMemory = records.reduce((sum, r) => sum + r.memoryMiB, 0);
  const details = { vms: records.length, memoryMiB: usedMemory, askedMiB: memory, maxVms: limits.maxVms, maxTotalMemoryMiB: limits.maxTotalMemoryMiB };
  if (memory > limits.maxTotalMemoryMiB) {
    return qemuError('NO_CAPACITY', `host ${hostId} can never hold a ${memory} MiB VM: all its VMs together may have ${limits.maxTotalMemoryMiB} MiB (limits.maxTotalMemoryMiB)`, details);
  }
  if (records.length + 1 > limits.maxVms) return qemuError('NO_CAPACITY', `host ${hostId} is full: it has ${records.length} of ${limits.maxVms} VMs (limits.maxVms)`, details);
  if (usedMemory + memory > limits.maxTotalMemoryMiB) {
    return qemuError('NO_CAPACITY', `host ${hostId} has no room for ${memory} MiB: ${usedMemory} of ${limits.maxTotalMemoryMiB} MiB in use (${limits.maxTotalMemoryMiB - usedMemory} free)`, details);
  }
  return undefined;
}

/** A setting as the message shows it: an absent name reads (none), not null. */
const shown = (value: unknown): string => (value === null ? '(none)' : JSON.stringify(value));
