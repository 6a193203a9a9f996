/**
 * Base images in the configured folder: disk images (NAME.qcow2, NAME.raw, NAME.img) and kernel images
 * (a NAME/ folder with vmlinuz and initrd.img, optionally cmdline). Names are checked, and every path is
 * resolved through symlinks and must stay inside the folder.
 */
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { qemuError } from './errors.ts';
import { runProgram } from './run.ts';

export type BaseImage =
  | { kind: 'disk'; name: string; path: string; format: 'qcow2' | 'raw' }
  | { kind: 'kernel'; name: string; kernel: string; initrd: string; cmdline?: string };

const DISK_EXTENSIONS = ['.qcow2', '.raw', '.img'] as const;

async function inside(root: string, candidate: string): Promise<string | undefined> {
  const real = await realpath(candidate).catch(() => undefined);
  if (!real) return undefined;
  return real === root || real.startsWith(root + sep) ? real : undefined;
}

/** `candidate` resolved inside `root` when it is a regular file (QEMU gets it as -kernel or -initrd). */
async function fileInside(root: string, candidate: string): Promise<string | undefined> {
  const real = await inside(root, candidate);
  return real !== undefined && (await stat(real)).isFile() ? real : undefined;
}

/** A kernel command line is a line: longer than this is not one someone meant. */
const MAX_CMDLINE_BYTES = 4096;

/**
 * A kernel image's `cmdline`, trimmed, or undefined when there is none. Only a small regular file is read
 * (a FIFO would block the read until someone writes), and it must fit on QEMU's command line as one argument.
 */
async function readCmdline(root: string, candidate: string): Promise<string | undefined> {
  const path = await inside(root, candidate);
  if (path === undefined) return undefined;
  const info = await stat(path);
  if (!info.isFile()) throw qemuError('IMAGE_INVALID', `${path}: cmdline is not a regular file`, { cmdline: path });
  if (info.size > MAX_CMDLINE_BYTES) throw qemuError('IMAGE_INVALID', `${path}: cmdline is larger than ${MAX_CMDLINE_BYTES} bytes (${info.size})`, { cmdline: path });
  const text = (await readFile(path, 'utf8')).trim();
  if (text.includes('\0')) throw qemuError('IMAGE_INVALID', `${path}: cmdline holds a NUL character`, { cmdline: path });
  return text;
}

/** Candidate image names (valid names only; `resolveImage` still decides whether each is usable). */
export async function listImages(imagesDir: string): Promise<string[]> {
  const root = await realpath(imagesDir).catch(() => {
    throw qemuError('IMAGE_INVALID', `the images folder ${imagesDir} does not exist`);
  });
  const names = new Set<string>();
  for (const entry of await readdir(root, { withFileTypes: true })) {
    const extension = DISK_EXTENSIONS.find((ext) => entry.name.endsWith(ext));
    // A symlink counts only if it stays inside the folder.
    if (extension && (entry.isFile() || entry.isSymbolicLink()) && (await inside(root, join(root, entry.name)))) names.add(entry.name.slice(0, -extension.length));
    else if (entry.isDirectory()) {
      const hasKernel = await stat(join(root, entry.name, 'vmlinuz')).then((s) => s.isFile(), () => false);
      if (hasKernel) names.add(entry.name);
    }
  }
  return [...names].filter((name) => IMAGE_NAME.test(name) && !name.includes('..')).sort();
}

const IMAGE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/;

export async function resolveImage(imagesDir: string, name: string, qemuImg: string): Promise<BaseImage> {
  const root = await realpath(imagesDir).catch(() => {
    throw qemuError('IMAGE_INVALID', `the images folder ${imagesDir} does not exist`);
  });
  for (const extension of DISK_EXTENSIONS) {
    const path = await inside(root, join(root, `${name}${extension}`));
    if (!path) continue;
    if (!(await stat(path)).isFile()) continue;
    return { kind: 'disk', name, path, format: await detectFormat(qemuImg, path, root) };
  }
  const folder = await inside(root, join(root, name));
  if (folder && (await stat(folder)).isDirectory()) {
    const kernel = await fileInside(root, join(folder, 'vmlinuz'));
    const initrd = await fileInside(root, join(folder, 'initrd.img'));
    if (kernel && initrd) {
      const cmdline = await readCmdline(root, join(folder, 'cmdline'));
      return cmdline === undefined ? { kind: 'kernel', name, kernel, initrd } : { kind: 'kernel', name, kernel, initrd, cmdline };
    }
  }
  const available = await listImages(imagesDir);
  throw qemuError('IMAGE_NOT_FOUND', `no image "${name}" in ${imagesDir}; available: ${available.join(', ') || 'none'}`, { image: name, available });
}

/** One image of `qemu-img info --backing-chain`'s list: the file, then what it reads from besides itself. */
interface ChainEntry {
  filename?: string;
  format?: string;
  'format-specific'?: { data?: { 'data-file'?: string } };
}

/**
 * Asks qemu-img, never trusting the file extension: a "raw" file that is really qcow2 must say so. A qcow2
 * also names the files QEMU will open with it — a backing file, an external data file — and those must
 * stay inside the images folder too: a downloaded image that names /dev/sda as its backing file would
 * otherwise give a guest the host's disk. Every file of the chain must be qcow2 or raw, for the same reason.
 */
async function detectFormat(qemuImg: string, path: string, root: string): Promise<'qcow2' | 'raw'> {
  const result = await runProgram([qemuImg, 'info', '--output=json', '--backing-chain', '--', path], { timeoutMs: 30_000 });
  if (result.code !== 0) throw qemuError('IMAGE_INVALID', `qemu-img cannot read ${path}: ${result.stderr.trim()}`);
  const chain = JSON.parse(result.stdout) as ChainEntry[];
  const format = chain[0]?.format;
  if (format !== 'qcow2' && format !== 'raw') throw qemuError('IMAGE_INVALID', `${path} is in format "${format}"; qcow2 and raw are supported`);
  for (const [depth, entry] of chain.entries()) {
    const file = entry.filename ?? '';
    // Other formats name files of their own that this check does not know how to find (a vmdk's extents,
    // a qed's backing file by another key): only qcow2 and raw, whose references are checked here, may back one.
    if (depth > 0 && entry.format !== 'qcow2' && entry.format !== 'raw') {
      throw qemuError('IMAGE_INVALID', `${path} uses backing file ${file} in format "${entry.format ?? 'unknown'}"; only qcow2 and raw files may back an image`, { image: path, backingFile: file, format: entry.format });
    }
    // qemu-img names each backing file as QEMU will open it: relative to the image that names it.
    const named = depth === 0 ? [] : [{ what: 'backing file', name: file }];
    const dataFile = entry['format-specific']?.data?.['data-file'];
    if (dataFile !== undefined) named.push({ what: 'data file', name: resolve(dirname(file), dataFile) });
    for (const { what, name } of named) {
      if (!isAbsolute(name) || !(await inside(root, name))) {
        throw qemuError('IMAGE_INVALID', `${path} uses ${what} ${name}, which is outside the images folder ${root}; only files inside it may be used`, { image: path, [what === 'backing file' ? 'backingFile' : 'dataFile']: name });
      }
    }
  }
  return format;
}

/** A copy-on-write overlay on the base: the base is never written. `-F` is mandatory since QEMU 6.1. */
export async function createOverlay(qemuImg: string, base: { path: string; format: string }, overlay: string, signal?: AbortSignal): Promise<void> {
  const result = await runProgram([qemuImg, 'create', '-q', '-f', 'qcow2', '-b', base.path, '-F', base.format, '--', overlay], { timeoutMs: 60_000, signal });
  if (result.code !== 0) throw qemuError('QEMU_FAILED', `qemu-img could not create the overlay ${overlay}: ${result.stderr.trim()}`);
}
