/** Standing in for another holder of a VM id's claim (qemu-backend's vm-claim.ts), in tests. */
import { mkdir, symlink } from 'node:fs/promises';
import process from 'node:process';
import { claimEntryPath, claimsDir, claimTarget } from '../../../plugins/qemu-backend/vm-claim.ts';

/**
 * An entry of the claim on `id`, as another taker makes it: by default fresh (this process, a minute to
 * go) and numbered 1. Removing the returned path releases it.
 */
export async function holdClaim(stateDir: string, id: string, by: string, entry: { pid?: number; until?: number; n?: number; token?: string } = {}): Promise<string> {
  await mkdir(claimsDir(stateDir), { recursive: true });
  const path = claimEntryPath(stateDir, id, entry.n ?? 1);
  await symlink(claimTarget(by, entry.pid ?? process.pid, entry.until ?? Date.now() + 60_000, entry.token ?? `${by}-test`), path);
  return path;
}
