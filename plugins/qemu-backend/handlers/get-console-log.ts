/**
 * The end of a VM's serial console log (`serial.log` in its folder): the last `lines` lines within the last
 * `maxBytes` bytes, so a guest that floods its console cannot make the reply unbounded. Read-only: not
 * serialized with the VM's other messages.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { getConsoleLogPayload } from '../schemas.ts';
import { vmPaths } from '../state.ts';
import { requireRecord } from '../vm-ops.ts';

export default defineHandler(getConsoleLogPayload, qemuOptionsSchema, async ({ vm, lines, maxBytes }, ctx) => {
  await requireRecord(ctx.options, vm, ctx.host);
  const path = vmPaths(ctx.options.stateDir, vm).serialLog;
  const none = { vm, text: '', lines: 0, bytes: 0, fileBytes: 0, truncated: false };
  // Only a regular file is opened: opening a FIFO for reading waits for a writer.
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!info) return { ...none, hint: 'the VM has not written to its console yet' };
  if (!info.isFile()) return { ...none, hint: `${path} is not a regular file` };
  const handle = await open(path, 'r');
  try {
    const fileBytes = (await handle.stat()).size;
    // A cut in the middle of a UTF-8 sequence or a line: drop the partial first line unless it is all there is.
    let text = new TextDecoder('utf-8', { fatal: false }).decode(await readTail(handle, fileBytes, maxBytes));
    if (maxBytes < fileBytes && text.includes('\n')) text = text.slice(text.indexOf('\n') + 1);
    const all = text.split('\n');
    const trailingNewline = all[all.length - 1] === '';
    const complete = trailingNewline ? all.slice(0, -1) : all;
    const kept = complete.slice(-lines);
    const out = kept.join('\n') + (trailingNewline && kept.length > 0 ? '\n' : '');
    const bytes = new TextEncoder().encode(out).length;
    return { vm, text: out, lines: kept.length, bytes, fileBytes, truncated: bytes < fileBytes };
  } finally {
    await handle.close();
  }
});

/**
 * The last `maxBytes` of a file that was `fileBytes` long when asked. Only what was read: a start or restart
 * of the VM empties serial.log, and may do so between the size and the read (the rest would be zeros).
 */
export async function readTail(handle: FileHandle, fileBytes: number, maxBytes: number): Promise<Uint8Array> {
  const length = Math.min(fileBytes, maxBytes);
  const buffer = new Uint8Array(length);
  const { bytesRead } = await handle.read(buffer, 0, length, fileBytes - length);
  return buffer.subarray(0, bytesRead);
}
