/**
 * Reads dnsmasq's lease file as text, for the strategy and the sweeper. Only a regular file (or a link to
 * one) is read: from a FIFO the read would wait until someone writes, holding a thread of libuv's pool that
 * aborting does not free, and a device such as /dev/zero never ends. A folder is left to the read, which
 * fails with EISDIR.
 */
import type { Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';

/** The file's text; undefined when it does not exist (dnsmasq has not written it yet). */
export async function readLeaseText(leaseFile: string, signal?: AbortSignal): Promise<string | undefined> {
  try {
    const info = await stat(leaseFile);
    const kind = specialKind(info);
    if (kind !== undefined) throw new Error(`${leaseFile} is a ${kind}, not a regular file: dnsmasq writes its leases to a plain file (--dhcp-leasefile)`);
    return await readFile(leaseFile, { encoding: 'utf8', ...(signal && { signal }) });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

function specialKind(info: Stats): string | undefined {
  if (info.isFIFO()) return 'FIFO';
  if (info.isCharacterDevice()) return 'character device';
  if (info.isBlockDevice()) return 'block device';
  if (info.isSocket()) return 'socket';
  return undefined;
}
