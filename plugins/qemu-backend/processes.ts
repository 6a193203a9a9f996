/**
 * Is a VM's QEMU running? The pidfile names the process, /proc says whether it is alive — a zombie counts as
 * dead — and its command line must give the VM's name as `-name cloudlet-<id>` and its pidfile as `-pidfile`
 * (a recycled pid running something that merely mentions the VM, such as `pgrep -af cloudlet-<id>`, is not
 * its QEMU). When the pidfile is gone or names no such process (deleted by hand, a restored backup), /proc
 * is searched for such a process, so a lost pidfile never leads to a second QEMU for one VM.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import process from 'node:process';

export async function readPid(pidfile: string): Promise<number | undefined> {
  // Synchronous: a missing pidfile (a stopped VM) is one failed stat, not a thread-pool round trip; list-vms
  // asks this for every VM of the host. The stat does not throw for a missing file: a thrown ENOENT (an
  // Error with its stack) per stopped VM cost more than the read itself.
  // Only a regular file is read: a FIFO in its place would block the thread for good.
  let text: string | undefined;
  try {
    text = statSync(pidfile, { throwIfNoEntry: false })?.isFile() ? readFileSync(pidfile, 'utf8') : undefined;
  } catch {
    text = undefined;
  }
  const pid = text === undefined ? NaN : Number.parseInt(text.trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/**
 * `pid` is the VM's QEMU: alive, `-name cloudlet-<id>`, and a `-pidfile` that is this VM's pidfile — the same
 * path, or the same file under another spelling of the state folder (a symlink): a QEMU of the same VM id
 * under another state folder is not this VM's.
 */
export async function isQemuAlive(pid: number, vmId: string, pidfile: string): Promise<boolean> {
  if (!(await isLive(pid))) return false;
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  return argAfter(argv, '-name') === qemuProcessName(vmId) && samePidfile(argAfter(argv, '-pidfile'), pidfile);
}

/**
 * The same pidfile: the same path, or the same name in the same VM folder reached another way (a symlinked
 * spelling of the state folder). Folders, not the files: the pidfile itself may be the thing that is lost.
 */
function samePidfile(theirs: string | undefined, ours: string): boolean {
  if (theirs === undefined) return false;
  if (theirs === ours) return true;
  if (basename(theirs) !== basename(ours)) return false;
  try {
    const [a, b] = [statSync(dirname(theirs), { throwIfNoEntry: false }), statSync(dirname(ours), { throwIfNoEntry: false })];
    return a !== undefined && b !== undefined && a.dev === b.dev && a.ino === b.ino;
  } catch {
    return false;
  }
}

function argAfter(argv: readonly string[], flag: string): string | undefined {
  const at = argv.indexOf(flag);
  return at >= 0 ? argv[at + 1] : undefined;
}

async function isLive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (!stat) return false;
  // Field 3 (after the parenthesised name, which may itself contain spaces) is the state.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

/**
 * Every process that looks like a cloudlet QEMU (a `-name cloudlet-…` and a `-pidfile`), keyed by its
 * `-name` (the caller checks the `-pidfile`, which may be spelled another way), QEMU programs (`qemu-system-*`) first: a wrapper that did not `exec` QEMU carries the
 * same arguments, and it is QEMU that must be stopped. One pass over /proc, with synchronous reads: /proc is
 * in memory, and a few hundred thread-pool round trips would cost more than the reads. Liveness is checked by
 * the caller, for the one it wants.
 */
function scanQemus(): ReadonlyMap<string, number[]> {
  const found = new Map<string, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return found;
  }
  for (const entry of entries) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // ended meanwhile
    }
    const name = argAfter(argv, '-name');
    if (name === undefined || argAfter(argv, '-pidfile') === undefined || !name.startsWith('cloudlet-')) continue;
    const key = name;
    const pids = found.get(key) ?? [];
    if (basename(argv[0] ?? '').startsWith('qemu-system-')) pids.unshift(pid);
    else pids.push(pid);
    found.set(key, pids);
  }
  return found;
}

/** One /proc scan, made on first use and shared: list-vms asks about every VM of the host with one. */
export type QemuScan = () => ReadonlyMap<string, number[]>;

export function memoQemuScan(): QemuScan {
  let scan: ReadonlyMap<string, number[]> | undefined;
  return () => (scan ??= scanQemus());
}

/** The `-name` QEMU gets: cloudlet's naming, so the sweeper can tell our processes from others. */
export function qemuProcessName(vmId: string): string {
  return `cloudlet-${vmId}`;
}

/**
 * The pid of the VM's QEMU, or undefined when none runs. `scan`: a shared /proc scan (memoQemuScan) for a
 * caller that asks about many VMs; without one, a VM whose pidfile names no live QEMU costs one scan.
 */
export async function runningPid(pidfile: string, vmId: string, scan: QemuScan = memoQemuScan()): Promise<number | undefined> {
  const pid = await readPid(pidfile);
  if (pid !== undefined && (await isQemuAlive(pid, vmId, pidfile))) return pid;
  // Asked again: a shared scan may be older than a pid's reuse.
  for (const candidate of scan().get(qemuProcessName(vmId)) ?? []) {
    if (await isQemuAlive(candidate, vmId, pidfile)) return candidate;
  }
  return undefined;
}

/**
 * Waits until the process is gone (polling /proc), up to the timeout. By liveness alone: a QEMU that is
 * exiting may already show an empty command line while it still holds its tap and its disk's lock.
 */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (await isLive(pid)) {
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/** SIGKILL for the VM's QEMU, if one runs; waits a moment for it to go. */
export async function killQemu(pidfile: string, vmId: string, waitMs = 1_000): Promise<void> {
  const pid = await runningPid(pidfile, vmId);
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return; // gone meanwhile
  }
  await waitForExit(pid, waitMs);
}
