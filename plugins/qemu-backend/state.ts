/**
 * Per-VM records on disk: `<stateDir>/<vm id>/vm.json`, written atomically (temp file + rename) so a crash
 * never leaves half a record. The folder also holds the VM's overlay disk, sockets, pidfile and serial log.
 */
import { readdirSync, readFileSync, type Dirent } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
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
  };
}

export async function writeRecord(stateDir: string, record: VmRecord): Promise<void> {
  const paths = vmPaths(stateDir, record.id);
  await mkdir(paths.dir, { recursive: true, mode: 0o750 });
  const temp = `${paths.record}.${process.pid}.tmp`;
  await writeFile(temp, `${JSON.stringify({ ...record, updatedAt: new Date().toISOString() }, null, 2)}\n`, { mode: 0o640 });
  await rename(temp, paths.record);
}

export async function readRecord(stateDir: string, id: string): Promise<VmRecord | undefined> {
  const text = await readFile(vmPaths(stateDir, id).record, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  return text === undefined ? undefined : (JSON.parse(text) as VmRecord);
}

/**
 * Every record of this host's state folder; folders that are not VM ids are ignored, and so are records that
 * cannot be read. Read synchronously on purpose: handlers run in worker threads, and a thousand small files
 * read one after another take a fraction of the time of a thousand concurrent reads through libuv's
 * four-thread pool (open, stat, read, close: four round trips each).
 */
export async function listRecords(stateDir: string): Promise<VmRecord[]> {
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
    try {
      records.push(JSON.parse(readFileSync(vmPaths(stateDir, entry.name).record, 'utf8')) as VmRecord);
    } catch {
      // no record (yet), or a torn one: not a VM of this host
    }
  }
  return records.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export async function removeVmFolder(stateDir: string, id: string): Promise<void> {
  // Retried: a QEMU killed a moment ago may still be closing its serial log in the folder (ENOTEMPTY).
  await rm(vmPaths(stateDir, id).dir, { recursive: true, force: true, maxRetries: 3 });
}
