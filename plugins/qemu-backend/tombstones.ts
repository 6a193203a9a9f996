/**
 * What delete-vm leaves behind on purpose: `<stateDir>/.deleted/<vm id>`, naming the request that made the
 * VM and when it went. Without it a deleted VM's id could come back: its create sent again with the same
 * request id derives the same id (vm-id.ts) and would make a new VM there, which a late retry of the old
 * VM's delete would then reach. With it, that create is refused, and no new VM ever gets a deleted id.
 * The folder's name is no VM id (VM_ID_PATTERN), so nothing that scans the state folder for VMs reads it.
 */
import { createHash, randomUUID } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import { z } from '../../core/plugin-api.ts';
import { VM_ID_PATTERN } from './schemas.ts';

/** Deleted ids remembered per host, at most: the oldest go first. Far more than a host holds at once. */
export const MAX_TOMBSTONES = 10_000;

const tombstoneSchema = z.object({ vm: z.string(), request: z.string().optional(), deletedAt: z.string() });
export type Tombstone = z.infer<typeof tombstoneSchema>;

const folder = (stateDir: string) => join(stateDir, '.deleted');
/** The same tombstones by request: a VM that got a random id (its derived one was taken) is found too. */
const byRequest = (stateDir: string) => join(folder(stateDir), 'requests');
const requestFile = (request: string) => createHash('sha256').update(request).digest('hex');

/** Records that `vm` was deleted (written whole: temp file and rename), then keeps the newest `max`. */
export async function recordDeleted(stateDir: string, vm: string, request: string | undefined, max = MAX_TOMBSTONES): Promise<void> {
  const tombstone: Tombstone = { vm, ...(request === undefined ? {} : { request }), deletedAt: new Date().toISOString() };
  await writeWhole(folder(stateDir), vm, tombstone);
  if (request !== undefined) await writeWhole(byRequest(stateDir), requestFile(request), tombstone);
  await pruneOldest(folder(stateDir), [...(await deletedIds(stateDir))], max);
  if (request !== undefined) {
    const names = await readdir(byRequest(stateDir)).catch(() => [] as string[]);
    // Tombstones only: a temp file is another delete's, about to be renamed.
    await pruneOldest(byRequest(stateDir), names.filter((name) => /^[0-9a-f]{64}$/.test(name)), max);
  }
}

/** The tombstone of `vm`, if it was deleted here (and is still remembered); one that cannot be read counts as none. */
export async function deletedRecord(stateDir: string, vm: string): Promise<Tombstone | undefined> {
  const tombstone = await readTombstone(join(folder(stateDir), vm));
  return tombstone?.vm === vm ? tombstone : undefined;
}

/** The tombstone of the VM that `request` made, if that VM was deleted here. */
export async function deletedByRequest(stateDir: string, request: string): Promise<Tombstone | undefined> {
  const tombstone = await readTombstone(join(byRequest(stateDir), requestFile(request)));
  return tombstone?.request === request ? tombstone : undefined;
}

/** The ids deleted here that are still remembered: a new VM is never given one of them. */
export async function deletedIds(stateDir: string): Promise<Set<string>> {
  const names = await readdir(folder(stateDir)).catch(() => [] as string[]);
  return new Set(names.filter((name) => VM_ID_PATTERN.test(name)));
}

async function readTombstone(path: string): Promise<Tombstone | undefined> {
  try {
    const parsed = tombstoneSchema.safeParse(JSON.parse(await readFile(path, 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

async function writeWhole(dir: string, name: string, tombstone: Tombstone): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o750 });
  // A name of its own: two deletes of the same VM at once must not rename each other's file away.
  const temp = join(dir, `.${name}.${process.pid}.${randomUUID()}.tmp`);
  await writeFile(temp, `${JSON.stringify(tombstone)}\n`, { mode: 0o640 });
  await rename(temp, join(dir, name));
}

/** Removes the oldest of `names` (by file time) beyond `max`. Only past the cap does it look at the files. */
async function pruneOldest(dir: string, names: string[], max: number): Promise<void> {
  if (names.length <= max) return;
  const aged = await Promise.all(names.map(async (name) => ({ name, mtimeMs: (await lstat(join(dir, name)).catch(() => undefined))?.mtimeMs ?? 0 })));
  aged.sort((a, b) => a.mtimeMs - b.mtimeMs);
  // Two deletes pruning at once may pick the same files: removing one twice is fine.
  await Promise.all(aged.slice(0, names.length - max).map(({ name }) => rm(join(dir, name), { force: true })));
}
