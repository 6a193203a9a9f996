/**
 * Is a VM's QEMU running? The pidfile names the process, /proc says whether it is alive — a zombie or a
 * recycled pid running something else counts as dead — and the command line must carry the VM's id.
 */
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import process from 'node:process';

export async function readPid(pidfile: string): Promise<number | undefined> {
  // Synchronous: a missing pidfile (a stopped VM) is one failed stat, not a thread-pool round trip; list-vms
  // asks this for every VM of the host. The stat does not throw for a missing file: a thrown ENOENT (an
  // Error with its stack) per stopped VM cost more than the read itself.
  let text: string | undefined;
  try {
    text = statSync(pidfile, { throwIfNoEntry: false }) ? readFileSync(pidfile, 'utf8') : undefined;
  } catch {
    text = undefined;
  }
  const pid = text === undefined ? NaN : Number.parseInt(text.trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

export async function isQemuAlive(pid: number, vmId: string): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (!stat) return false;
  // Field 3 (after the parenthesised name, which may itself contain spaces) is the state.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return false;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.split('\0').includes(qemuProcessName(vmId));
}

/** The `-name` QEMU gets: cloudlet's naming, so the sweeper can tell our processes from others. */
export function qemuProcessName(vmId: string): string {
  return `cloudlet-${vmId}`;
}

export async function runningPid(pidfile: string, vmId: string): Promise<number | undefined> {
  const pid = await readPid(pidfile);
  return pid !== undefined && (await isQemuAlive(pid, vmId)) ? pid : undefined;
}

/** Waits until the process is gone (polling /proc), up to the timeout. */
export async function waitForExit(pid: number, vmId: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (await isQemuAlive(pid, vmId)) {
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/** SIGKILL for the VM's QEMU, if its pidfile names one that runs; waits a moment for it to go. */
export async function killQemu(pidfile: string, vmId: string, waitMs = 1_000): Promise<void> {
  const pid = await runningPid(pidfile, vmId);
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return; // gone meanwhile
  }
  await waitForExit(pid, vmId, waitMs);
}
