/**
 * VM records written straight into a qemu-backend state folder: the records a host keeps for its VMs, with
 * no QEMU behind them. Written with qemu-backend's own writer, so they are exactly what it reads.
 */
import { writeRecord, type VmRecord } from '../../plugins/qemu-backend/state.ts';

/** `n` as 8 lowercase letters (base 26), the suffix of a VM id. */
function suffix(n: number): string {
  let text = '';
  for (let i = 0; i < 8; i++) {
    text = String.fromCharCode(97 + (n % 26)) + text;
    n = Math.floor(n / 26);
  }
  return text;
}

export function macFor(n: number): string {
  const bytes = [0x02, 0xbe, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff, 0x01];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export function vmRecord(hostId: string, n: number, bridge: string | undefined): VmRecord {
  const id = `${hostId}.${suffix(n)}`;
  const at = new Date(Date.UTC(2026, 0, 1) + n * 1000).toISOString();
  return {
    v: 1,
    id,
    host: hostId,
    name: `bench-${n}`,
    image: 'tiny',
    imageKind: 'kernel',
    memoryMiB: 128,
    vcpus: 1,
    mac: macFor(n),
    network: bridge ? { mode: 'bridge', bridge, tap: `clt${suffix(n)}`.slice(0, 15) } : { mode: 'none' },
    autostart: false,
    desired: 'stopped',
    createdAt: at,
    updatedAt: at,
  };
}

/** Writes records `from`..`from + count - 1`, 50 at a time. */
export async function writeVmRecords(stateDir: string, hostId: string, from: number, count: number, bridge?: string): Promise<VmRecord[]> {
  const records = Array.from({ length: count }, (_, i) => vmRecord(hostId, from + i, bridge));
  for (let i = 0; i < records.length; i += 50) await Promise.all(records.slice(i, i + 50).map((record) => writeRecord(stateDir, record)));
  return records;
}
