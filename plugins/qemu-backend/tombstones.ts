/**
 * What delete-vm leaves behind on purpose: `<stateDir>/.deleted/<vm id>`, naming the request that made the
 * VM and when it went. Without it a deleted VM's id could come back: its create sent again with the same
 * request id derives the same id (vm-id.ts) and would make a new VM there, which a late retry of the old
 * VM's delete would then reach. With it, that create is refused, and no new VM ever gets a deleted id.
 * The folder's name is no VM id (VM_ID_PATTERN), so nothing that scans the state folder for VMs reads it.
 */
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

/** Records that `vm` was deleted (written whole: temp file and rename), then keeps the newest MAX_TOMBSTONES. */
export async function recordDeleted(stateDir: string, vm: string, request: string | undefined, max = MAX_TOMBSTONES): Promise<void> {
  const dir = folder(stateDir);
  await mkdir(dir, { recursive: true, mode: 0o750 });
  const tombstone: Tombstone = { vm, ...(request === undefined ? {} : { request }), deletedAt: new Date().toISOString() };
  const temp = join(dir, `.${vm}.${process.pid}.tmp`);
  await writeFile(temp, `${JSON.stringify(tombstone)}\n`, { mode: 0o640 });
  await rename(temp, join(dir, vm));
  const names = await deletedIds(stateDir);
  if (names.size > max) await pruneOldest(dir, [...names], names.size - max);
}

/** The tombstone of `vm`, if it was deleted here (and is still remembered); one that cannot be read counts as none. */
export async function deletedRecord(stateDir: string, vm: string): Promise<Tombstone | undefined> {
  try {
    const parsed = tombstoneSchema.safeParse(JSON.parse(await readFile(join(folder(stateDir), vm), 'utf8')));
    return parsed.success && parsed.data.vm === vm ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** The ids deleted here that are still remembered: a new VM is never given one of them. */
export async function deletedIds(stateDir: string): Promise<Set<string>> {
  const names = await readdir(folder(stateDir)).catch(() => [] as string[]);
  return new Set(names.filter((name) => VM_ID_PATTERN.test(name)));
}

async function pruneOldest(dir: string, names: string[], count: number): Promise<void> {
  const aged = await Promise.all(names.map(async (name) => ({ name, mtimeMs: (await lstat(join(dir, name)).catch(() => undefined))?.mtimeMs ?? 0 })));
  aged.sort((a, b) => a.mtimeMs - b.mtimeMs);
  // Two deletes pruning at once may pick the same files: removing one twice is fine.
  await Promise.all(aged.slice(0, count).map(({ name }) => rm(join(dir, name), { force: true })));
}
