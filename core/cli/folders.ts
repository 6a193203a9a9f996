/** Folders the CLI writes into (init, install-service, keys): a path that cannot be one is named, not a crash. */
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { CloudletError, cloudletError } from '../errors.ts';

/**
 * Makes `dir` (and its parents); `source` says where it came from, e.g. `--output /etc/x.yaml`. One level at
 * a time from the deepest existing folder, not with `recursive: true`: under /proc Node 20's recursive mkdir
 * never returns (`--output /proc/self/x/y.yaml` hung), while a plain mkdir fails at once.
 */
export async function makeFolder(dir: string, source: string, mode?: number): Promise<void> {
  const missing: string[] = [];
  for (let path = resolve(dir); !(await stat(path).catch(() => undefined)) && dirname(path) !== path; path = dirname(path)) missing.unshift(path);
  for (const path of missing) {
    await mkdir(path, mode === undefined ? {} : { mode }).catch(async (error: unknown) => {
      // Made meanwhile (by another process) is as good as made here.
      if ((error as NodeJS.ErrnoException).code === 'EEXIST' && (await stat(path).catch(() => undefined))?.isDirectory()) return;
      throw await folderError(dir, source, error);
    });
  }
  // An existing path that is not a folder: let mkdir say so, as it would have.
  if (missing.length === 0 && !(await stat(dir)).isDirectory()) throw await folderError(dir, source, Object.assign(new Error(`EEXIST: file already exists, mkdir '${dir}'`), { code: 'EEXIST' }));
}

/** Names an output path in an error: the flag that gave it, or that it is the default and which flag changes it. */
export function outputSource(flag: string, given: string | undefined, path: string): string {
  return given === undefined ? `${path} (the default; choose another with ${flag})` : `${flag} ${path}`;
}

/** Whether `error` is mkdir's own (for a folder another module made, e.g. `keys generate --out`). */
export function isMkdirError(error: unknown): error is NodeJS.ErrnoException & { path: string } {
  const errno = error as NodeJS.ErrnoException | null;
  return typeof errno?.code === 'string' && errno.syscall === 'mkdir' && typeof errno.path === 'string';
}

/** A USAGE error for a folder that mkdir refused: the file in the way when there is one, else the reason. */
export async function folderError(dir: string, source: string, error: unknown): Promise<CloudletError> {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOTDIR' || code === 'EEXIST') {
    const blocker = await nearestNonFolder(dir);
    if (blocker !== undefined) return cloudletError('USAGE', `cannot create the folder for ${source}: ${blocker} is a file, not a folder`);
  }
  return cloudletError('USAGE', `cannot create the folder for ${source}: ${dir}: ${(error as Error).message}`);
}

/** The deepest existing path on the way to `dir` that is not a folder, if any. */
async function nearestNonFolder(dir: string): Promise<string | undefined> {
  for (let path = dir; ; path = dirname(path)) {
    const found = await stat(path).catch(() => undefined);
    if (found) return found.isDirectory() ? undefined : path;
    if (dirname(path) === path) return undefined;
  }
}
