/**
 * The end of a VM's serial console log (`serial.log` in its folder): the last `lines` lines within the last
 * `maxBytes` bytes, so a guest that floods its console cannot make the reply unbounded. Read-only: not
 * serialized with the VM's other messages.
 */
import { open } from 'node:fs/promises';
import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { getConsoleLogPayload } from '../schemas.ts';
import { vmPaths } from '../state.ts';
import { requireRecord } from '../vm-ops.ts';

export default defineHandler(getConsoleLogPayload, qemuOptionsSchema, async ({ vm, lines, maxBytes }, ctx) => {
  await requireRecord(ctx.options, vm, ctx.host);
  const path = vmPaths(ctx.options.stateDir, vm).serialLog;
  const handle = await open(path, 'r').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!handle) return { vm, text: '', lines: 0, bytes: 0, fileBytes: 0, truncated: false, hint: 'the VM has not written to its console yet' };
  try {
    const fileBytes = (await handle.stat()).size;
    const length = Math.min(fileBytes, maxBytes);
    const buffer = new Uint8Array(length);
    await handle.read(buffer, 0, length, fileBytes - length);
    // A cut in the middle of a UTF-8 sequence or a line: drop the partial first line unless it is all there is.
    let text = new TextDecoder('utf-8', { fatal: false }).decode(buffer);
    if (length < fileBytes && text.includes('\n')) text = text.slice(text.indexOf('\n') + 1);
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
