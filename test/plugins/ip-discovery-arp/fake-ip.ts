/** Test helper: a stand-in `ip` program (a shell script in a temp dir) for tests that need no real network. */
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { tempDir } from '../../helpers.ts';

/** Writes `body` as an executable /bin/sh script and returns its path; it sees the ip arguments as "$@". */
export async function fakeIp(t: TestContext, body: string): Promise<{ path: string; dir: string }> {
  const dir = await tempDir(t, 'cloudlet-fake-ip-');
  const path = join(dir, 'ip');
  await writeFile(path, `#!/bin/sh\n${body}\n`);
  await chmod(path, 0o755);
  return { path, dir };
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}
