/**
 * What a doctor check reports, and the small probes checks are made of: find a program, run it for its
 * version, look at a folder, measure free disk. Probes never throw; they say what they found.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, stat, statfs } from 'node:fs/promises';
import { delimiter, dirname, isAbsolute, join } from 'node:path';
import process from 'node:process';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  /** Stable id, e.g. `qemu`, `bridge`, `images-dir`; scripts may match on it. */
  id: string;
  /** The plugin the check is for; null for the host and core. */
  plugin: string | null;
  status: CheckStatus;
  /** What was found, in one line. */
  summary: string;
  /** What to do about a warn or fail. */
  fix?: string;
}

export const ok = (id: string, plugin: string | null, summary: string): CheckResult => ({ id, plugin, status: 'ok', summary });
export const warn = (id: string, plugin: string | null, summary: string, fix: string): CheckResult => ({ id, plugin, status: 'warn', summary, fix });
export const fail = (id: string, plugin: string | null, summary: string, fix: string): CheckResult => ({ id, plugin, status: 'fail', summary, fix });

/** The absolute path of an executable: the name as given when it has a "/", else searched in PATH. */
export async function findProgram(name: string, path = process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'): Promise<string | undefined> {
  const candidates = name.includes('/') ? [name] : path.split(delimiter).filter(Boolean).map((dir) => join(dir, name));
  for (const candidate of candidates) {
    const executable = await access(candidate, constants.X_OK).then(
      () => stat(candidate).then((s) => s.isFile()),
      () => false,
    );
    if (executable) return candidate;
  }
  return undefined;
}

/** Runs `program args` (no shell) and returns the first line of its output, or why it could not. */
export function firstLineOf(program: string, args: string[], timeoutMs = 5_000): Promise<{ ok: true; line: string } | { ok: false; reason: string }> {
  return new Promise((resolve) => {
    let output = '';
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    child.stdout.on('data', (chunk: Uint8Array) => (output += String(chunk)));
    child.stderr.on('data', (chunk: Uint8Array) => (output += String(chunk)));
    child.on('error', (error) => resolve({ ok: false, reason: error.message }));
    child.on('close', (code, signal) => {
      const line = output.trim().split('\n')[0]?.trim() ?? '';
      resolve(code === 0 ? { ok: true, line } : { ok: false, reason: signal ? `killed by ${signal}` : `exit ${code}: ${line}` });
    });
  });
}

export type FolderState = { kind: 'ok'; writable: boolean; readable: boolean } | { kind: 'missing'; creatable: boolean; parent: string } | { kind: 'not-a-folder' };

/** Whether `dir` exists (readable, writable) or, if not, whether it could be created under its nearest existing parent. */
export async function folderState(dir: string): Promise<FolderState> {
  const info = await stat(dir).catch(() => undefined);
  if (info && !info.isDirectory()) return { kind: 'not-a-folder' };
  if (info) {
    const can = (mode: number) =>
      access(dir, mode).then(
        () => true,
        () => false,
      );
    return { kind: 'ok', readable: await can(constants.R_OK | constants.X_OK), writable: await can(constants.W_OK | constants.X_OK) };
  }
  let parent = dirname(dir);
  while (parent !== dirname(parent) && !(await stat(parent).catch(() => undefined))) parent = dirname(parent);
  const creatable = await access(parent, constants.W_OK | constants.X_OK).then(
    () => true,
    () => false,
  );
  return { kind: 'missing', creatable, parent };
}

/** Free bytes for unprivileged users on the filesystem holding `dir` (or its nearest existing parent). */
export async function freeBytes(dir: string): Promise<{ free: number; device: number; at: string } | undefined> {
  let at = isAbsolute(dir) ? dir : join(process.cwd(), dir);
  while (at !== dirname(at) && !(await stat(at).catch(() => undefined))) at = dirname(at);
  const [fs, info] = await Promise.all([statfs(at).catch(() => undefined), stat(at).catch(() => undefined)]);
  if (!fs || !info) return undefined;
  return { free: fs.bavail * fs.bsize, device: info.dev, at };
}

export function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
}
