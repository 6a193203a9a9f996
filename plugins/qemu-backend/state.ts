/**
 * Per-VM records on disk: `<stateDir>/<vm id>/vm.json`, written atomically (temp file + rename) so a crash
 * never leaves half a record. The folder also holds the VM's overlay disk, sockets, pidfile and serial log.
 */
import { lstatSync, readdirSync, readFileSync, type Dirent } from 'node:fs';
import { lstat, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import { qemuError } from './errors.ts';
import { checkRecord } from './record-schema.ts';
import { VM_ID_PATTERN } from './schemas.ts';

export interface VmRecord {
  v: 1;
  id: string;
  host: string;
  name?: string;
  image: string;
  imageKind: 'disk' | 'kernel';
  memoryMiB: number;
  vcpus: number;
  mac: string;
  network: { mode: 'bridge'; bridge: string; tap: string } | { mode: 'user' } | { mode: 'none' };
  autostart: boolean;
  /** What the owner asked for last; the process table says what is. */
  desired: 'running' | 'stopped';
  createdAt: string;
  updatedAt: string;
  /**
   * The id of the create-vm request that made the VM: the same request run again answers with this VM
   * instead of making another. Absent in records written before it was added.
   */
  request?: string;
}

export interface VmPaths {
  dir: string;
  record: string;
  disk: string;
  qmp: string;
  qga: string;
  pidfile: string;
  serialLog: string;
  /** Present while create-vm works on the VM (vm.json comes last): which agent process, since when. */
  creating: string;
  /** Touched when cloudlet starts or resets the VM: its mtime is when the guest last booted (markBooted). */
  booted: string;
}

export function vmPaths(stateDir: string, id: string): VmPaths {
  // One join: `dir` is normalised and the names are fixed, so appending them needs no second pass. list-vms
  // asks this for every VM; seven joins each were an eighth of its worker's time with 1,000 VMs.
  const dir = join(stateDir, id);
  return {
    dir,
    record: `${dir}/vm.json`,
    disk: `${dir}/disk.qcow2`,
    qmp: `${dir}/qmp.sock`,
    qga: `${dir}/qga.sock`,
    pidfile: `${dir}/qemu.pid`,
    serialLog: `${dir}/serial.log`,
    creating: `${dir}/creating`,
    booted: `${dir}/booted`,
  };
}

export async function writeRecord(stateDir: string, record: VmRecord): Promise<void> {
  const paths = vmPaths(stateDir, record.id);
  await mkdir(paths.dir, { recursive: true, mode: 0o750 });
  const temp = `${paths.record}.${process.pid}.tmp`;
  await writeFile(temp, `${JSON.stringify({ ...record, updatedAt: new Date().toISOString() }, null, 2)}\n`, { mode: 0o640 });
  await rename(temp, paths.record);
}

/**
 * Whether the folder of `id` holds a vm.json at all, usable or not (a symlink counts): such a folder is a
 * VM's, never a leftover of a create. create-vm, the start-up reconcile and the sweeper ask this before
 * touching a folder without a usable record.
 */
export async function hasRecordFile(stateDir: string, id: string): Promise<boolean> {
  return lstat(vmPaths(stateDir, id).record).then(
    () => true,
    (error: NodeJS.ErrnoException) => error.code !== 'ENOENT',
  );
}

/** A vm.json that exists but is not a record of its VM: what is wrong with it, in a phrase. */
export interface RecordProblem {
  vm: string;
  file: string;
  problem: string;
}

/**
 * The VM's record; undefined when there is none. One that cannot be read or is not a record of this VM
 * (hand-edited, torn, restored from elsewhere) is VM_RECORD_INVALID, naming the file and the problem: its
 * values go into QEMU's argv and `ip` commands, so nothing of it is used.
 */
export async function readRecord(stateDir: string, id: string): Promise<VmRecord | undefined> {
  const read = readRecordFile(stateDir, id);
  if (read === undefined || 'record' in read) return read?.record;
  throw qemuError('VM_RECORD_INVALID', `the record of ${id} (${read.file}) cannot be used: ${read.problem}; fix or remove the file, or delete the VM`, {
    vm: id,
    file: read.file,
    problem: read.problem,
  });
}

/**
 * Synchronous, like the rest of this module's reads (see listRecords). Only a regular file is read: a FIFO
 * would block the thread for good, and a symlink may lead anywhere (its target is never quoted back).
 */
function readRecordFile(stateDir: string, id: string): { record: VmRecord } | RecordProblem | undefined {
  const file = vmPaths(stateDir, id).record;
  const problem = (text: string): RecordProblem => ({ vm: id, file, problem: text });
  let text: string;
  try {
    const info = lstatSync(file, { throwIfNoEntry: false });
    if (info === undefined) return undefined;
    if (!info.isFile()) return problem(`not a regular file (${info.isSymbolicLink() ? 'a symlink' : info.isDirectory() ? 'a folder' : info.isFIFO() ? 'a FIFO' : 'a special file'})`);
    text = readFileSync(file, 'utf8');
  } catch (error) {
    return problem(`cannot be read: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return problem(`not JSON (${text.length === 0 ? 'empty' : 'cut short or damaged'})`);
  }
  const wrong = checkRecord(value, id);
  return wrong === undefined ? { record: value as VmRecord } : problem(wrong);
}

/**
 * Every record of this host's state folder; folders that are not VM ids are ignored, and so are folders
 * without vm.json (a create at work). A vm.json that is not a record of its VM is left out too, and told in
 * `problems` when the caller asks. Read synchronously on purpose: handlers run in worker threads, and a
 * thousand small files read one after another take a fraction of the time of a thousand concurrent reads
 * through libuv's four-thread pool (open, stat, read, close: four round trips each).
 */
export async function listRecords(stateDir: string, problems?: RecordProblem[]): Promise<VmRecord[]> {
  let entries: Dirent[];
  try {
    entries = readdirSync(stateDir, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const records: VmRecord[] = [];
  for (const entry of entries) {
    if (!entry.isDirectory() || !VM_ID_PATTERN.test(entry.name)) continue;
    const read = readRecordFile(stateDir, entry.name);
    if (read === undefined) continue;
    if ('record' in read) records.push(read.record);
    else problems?.push(read);
  }
  return records.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export async function removeVmFolder(stateDir: string, id: string): Promise<void> {
  // Retried: a QEMU killed a moment ago may still be closing its serial log in the folder (ENOTEMPTY).
  await rm(vmPaths(stateDir, id).dir, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * Notes that the guest boots now (QEMU starts, or is reset): called just before. get-vm-ip's wait then takes
 * only addresses seen since: a lease or neighbour entry from the previous boot would end it before the guest
 * is up again. Never fails: a mark that cannot be written is removed (the wait then takes any address),
 * rather than failing a start over it.
 */
export async function markBooted(paths: Pick<VmPaths, 'booted'>): Promise<void> {
  await writeFile(paths.booted, '', { mode: 0o640 }).catch(() => rm(paths.booted, { force: true }).catch(() => undefined));
}

/** When the guest last booted by markBooted (epoch ms); undefined for a VM started before there was one. */
export async function bootedAt(paths: Pick<VmPaths, 'booted'>): Promise<number | undefined> {
  return (await stat(paths.booted).catch(() => undefined))?.mtimeMs;
}
