/**
 * Per-VM records on disk: `<stateDir>/<vm id>/vm.json`, written atomically (temp file + rename) so a crash
 * never leaves half a record. The folder also holds the VM's overlay disk, sockets, pidfile and serial log.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
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
}

export function vmPaths(stateDir: string, id: string): VmPaths {
  const dir = join(stateDir, id);
  return {
    dir,
    record: join(dir, 'vm.json'),
    disk: join(dir, 'disk.qcow2'),
    qmp: join(dir, 'qmp.sock'),
    qga: join(dir, 'qga.sock'),
    pidfile: join(dir, 'qemu.pid'),
    serialLog: join(dir, 'serial.log'),
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

/** Every record of this host's state folder; folders that are not VM ids are ignored. */
export async function listRecords(stateDir: string): Promise<VmRecord[]> {
  const entries = await readdir(stateDir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
  const records = await Promise.all(
    entries.filter((e) => e.isDirectory() && VM_ID_PATTERN.test(e.name)).map((e) => readRecord(stateDir, e.name).catch(() => undefined)),
  );
  return records.filter((r): r is VmRecord => r !== undefined).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export async function removeVmFolder(stateDir: string, id: string): Promise<void> {
  await rm(vmPaths(stateDir, id).dir, { recursive: true, force: true });
}
