/**
 * What qemu-backend's state folder holds, read directly (its layout is `<stateDir>/<vm id>/vm.json` plus the
 * VM's overlay, sockets, pidfile and serial log; records are written by temp file + rename). Unlike
 * qemu-backend's listRecords, an unreadable vm.json is not dropped: it still marks its folder as a VM's, so
 * nothing of that VM is ever taken for a leftover.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { VM_ID_PATTERN } from '../qemu-backend/schemas.ts';
import type { VmRecord } from '../qemu-backend/state.ts';
import type { CreatingMark } from '../qemu-backend/vm-ops.ts';

export interface RecordInfo {
  id: string;
  mac: string;
  tap: string | null;
  autostart: boolean;
  desired: 'running' | 'stopped';
  createdAtMs: number;
}

export interface BareFolder {
  id: string;
  path: string;
  /** Since the folder last changed (its mtime). */
  ageMs: number;
  hasDisk: boolean;
  entries: string[];
  /** create-vm's `creating` mark in it still holds (creatingMarkHolds): a create at work, whatever the age. */
  beingCreated?: true;
}

export interface StrayFile {
  path: string;
  ageMs: number;
}

export interface StateDirScan {
  /** Records of this host: host and id match. */
  records: RecordInfo[];
  /** Folders with a readable vm.json that names another host (or another id): never touched. */
  foreign: { id: string; host: string; mac: string; tap: string | null }[];
  /** Folders whose vm.json exists but cannot be read or parsed: protected, never touched. */
  unreadable: string[];
  /** This host's VM folders without vm.json: overlays and sockets of a VM that is gone (or half made). */
  bareFolders: BareFolder[];
  /** Another host's VM folders without vm.json: never touched. */
  foreignBareFolders: string[];
  /** `vm.json.<pid>.tmp` left by a record write that never got renamed. */
  strayFiles: StrayFile[];
}

const TEMP_RECORD = /^vm\.json\.\d+\.tmp$/;

export function ownsVmId(hostId: string, id: string): boolean {
  return VM_ID_PATTERN.test(id) && id.startsWith(`${hostId}.`) && id.length === hostId.length + 9;
}

export async function scanStateDir(stateDir: string, hostId: string, nowMs: number): Promise<StateDirScan> {
  const scan: StateDirScan = { records: [], foreign: [], unreadable: [], bareFolders: [], foreignBareFolders: [], strayFiles: [] };
  const entries = await readdir(stateDir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
  for (const entry of entries) {
    // Anything not named like a VM folder was not made by qemu-backend: not looked at.
    if (!entry.isDirectory() || !VM_ID_PATTERN.test(entry.name)) continue;
    const id = entry.name;
    const dir = join(stateDir, id);
    const names = await readdir(dir).catch(() => undefined);
    if (names === undefined) {
      scan.unreadable.push(id);
      continue;
    }
    if (!names.includes('vm.json')) {
      if (!ownsVmId(hostId, id)) {
        scan.foreignBareFolders.push(id);
        continue;
      }
      const info = await stat(dir).catch(() => undefined);
      if (!info) continue; // removed meanwhile
      const beingCreated = names.includes('creating') && (await creatingMarkHolds(dir, nowMs));
      scan.bareFolders.push({ id, path: dir, ageMs: nowMs - info.mtimeMs, hasDisk: names.includes('disk.qcow2'), entries: names.sort(), ...(beingCreated && { beingCreated }) });
      continue;
    }
    const record = await readRecordFile(join(dir, 'vm.json'));
    if (record === undefined) scan.unreadable.push(id);
    else if (record.host !== hostId || record.id !== id || !ownsVmId(hostId, id)) scan.foreign.push({ id, host: String(record.host), mac: record.mac.toLowerCase(), tap: recordInfo(record).tap });
    else {
      scan.records.push(recordInfo(record));
      // Only beside a readable record of this host: in another host's folder the file is not ours, and beside
      // an unreadable vm.json it may be the one good copy of the record. (A bare folder goes whole or stays.)
      for (const name of names.filter((n) => TEMP_RECORD.test(n))) {
        const info = await stat(join(dir, name)).catch(() => undefined);
        if (info?.isFile()) scan.strayFiles.push({ path: join(dir, name), ageMs: nowMs - info.mtimeMs });
      }
    }
  }
  return scan;
}

/**
 * Whether create-vm may still be at work in `dir`: its `creating` mark (written first, removed when the
 * create ends) names a time not reached yet, and the process that wrote it lives. The folder's age cannot
 * tell on its own: a create may take longer than minAgeMs (a raised create-vm timeout, a slow QEMU start).
 * A torn mark is its create's death while writing it; a dead writer's mark is a leftover.
 */
export async function creatingMarkHolds(dir: string, nowMs: number): Promise<boolean> {
  const text = await readFile(join(dir, 'creating'), 'utf8').catch(() => undefined);
  if (text === undefined) return false;
  let mark: Partial<CreatingMark>;
  try {
    mark = JSON.parse(text) as Partial<CreatingMark>;
  } catch {
    return false;
  }
  if (typeof mark.until !== 'number' || mark.until <= nowMs || !Number.isSafeInteger(mark.pid) || (mark.pid as number) <= 0) return false;
  return (await stat(`/proc/${mark.pid}`).catch(() => undefined)) !== undefined;
}

async function readRecordFile(path: string): Promise<VmRecord | undefined> {
  try {
    const value = JSON.parse(await readFile(path, 'utf8')) as Partial<VmRecord> | null;
    if (typeof value !== 'object' || value === null || typeof value.id !== 'string' || typeof value.host !== 'string' || typeof value.mac !== 'string') return undefined;
    return value as VmRecord;
  } catch {
    return undefined;
  }
}

function recordInfo(record: VmRecord): RecordInfo {
  const created = Date.parse(record.createdAt);
  return {
    id: record.id,
    mac: record.mac.toLowerCase(),
    tap: record.network?.mode === 'bridge' ? record.network.tap : null,
    autostart: record.autostart === true,
    desired: record.desired === 'stopped' ? 'stopped' : 'running',
    // An unparseable date counts as brand new: such a record is left alone until it says otherwise.
    createdAtMs: Number.isFinite(created) ? created : Number.MAX_SAFE_INTEGER,
  };
}

// Whether the folder of `id` holds a vm.json now (checked again right before a folder is removed).
export { hasRecordFile } from '../qemu-backend/state.ts';
