/**
 * dnsmasq's leases and the bridge's neighbour table, read with the parsers of ip-discovery-dnsmasq and
 * ip-discovery-arp; and how a lease is released (dnsmasq-utils' dhcp_release / dhcp_release6, which send
 * the local dnsmasq a DHCPRELEASE as if from the client) and a neighbour entry removed. argv arrays, no shell.
 *
 * Why dhcp_release and not rewriting the lease file: dnsmasq keeps its leases in memory and rewrites the file
 * from memory, so an edit while it runs is undone at its next write, and the address stays taken meanwhile.
 * A release makes dnsmasq itself forget the lease and rewrite the file.
 */
import { readLeaseText } from '../ip-discovery-dnsmasq/lease-file.ts';
import { parseLeases, type Lease } from '../ip-discovery-dnsmasq/leases.ts';
import { parseIpNeighJson, type NeighbourEntry } from '../ip-discovery-arp/neighbours.ts';
import { runProgram } from '../qemu-backend/run.ts';

export type { Lease, NeighbourEntry };

export interface LeaseFile {
  leases: Lease[];
  serverDuid: string | null;
  /** The file does not exist: dnsmasq has not written it yet, or the job names the wrong file. */
  missing?: true;
}

const COMMAND_TIMEOUT_MS = 10_000;

/** The file's leases; none when it does not exist (dnsmasq has not written it yet). */
export async function readLeaseFile(leaseFile: string): Promise<LeaseFile> {
  const text = await readLeaseText(leaseFile);
  if (text === undefined) return { leases: [], serverDuid: null, missing: true };
  const parsed = parseLeases(text);
  return { leases: [...parsed.v4, ...parsed.v6], serverDuid: parsed.serverDuid };
}

export async function readNeighbours(ipBinary: string, device: string, signal?: AbortSignal): Promise<NeighbourEntry[]> {
  const argv = [ipBinary, '-j', 'neigh', 'show', 'dev', device, 'nud', 'all'];
  const result = await runProgram(argv, { timeoutMs: COMMAND_TIMEOUT_MS, ...(signal ? { signal } : {}) });
  if (result.code !== 0) throw new Error(`"${argv.join(' ')}" exited ${result.code ?? 'on a timeout'}: ${result.stderr.trim() || 'no message'}`);
  return parseIpNeighJson(result.stdout);
}

export interface ReleaseTools {
  interface: string;
  releaseBinary: string;
  release6Binary: string;
}

/** The release command for a lease, or why there is none (an IPv6 lease needs the server's and client's DUIDs). */
export function releaseArgv(lease: Lease, serverDuid: string | null, tools: ReleaseTools): string[] | string {
  if (lease.family === 'ipv4') {
    if (lease.mac === null) return 'the lease has no hardware address';
    return [tools.releaseBinary, tools.interface, lease.address, lease.mac, ...(lease.clientId ? [lease.clientId] : [])];
  }
  if (serverDuid === null || lease.clientId === null || lease.iaid === undefined) return 'dhcp_release6 needs the server DUID, the client DUID and the IAID';
  // Its packet carries an IA_NA option only (see its --dry-run output): for a temporary address dnsmasq would
  // find no such binding. The lease goes when it expires, at dnsmasq's next write of the file.
  if (lease.temporary) return 'a temporary address (IA_TA): dhcp_release6 cannot release one (it sends IA_NA only); dnsmasq drops it once expired';
  return [
    tools.release6Binary,
    '--iface', tools.interface,
    '--ip', lease.address,
    '--server-id', serverDuid,
    '--client-id', lease.clientId,
    '--iaid', String(lease.iaid),
  ];
}

export async function releaseLease(argv: string[]): Promise<void> {
  const result = await runProgram(argv, { timeoutMs: COMMAND_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`"${argv.join(' ')}" failed: ${result.stderr.trim() || `exit ${result.code}`}`);
}

/** Removes a neighbour entry; one already gone counts as removed. */
export async function deleteNeighbour(ipBinary: string, device: string, address: string): Promise<void> {
  const result = await runProgram([ipBinary, 'neigh', 'del', address, 'dev', device], { timeoutMs: COMMAND_TIMEOUT_MS });
  if (result.code === 0) return;
  const still = await readNeighbours(ipBinary, device);
  if (still.some((entry) => entry.address === address && entry.mac !== null)) throw new Error(`ip neigh del ${address} dev ${device} failed: ${result.stderr.trim()}`);
}

export function leaseKey(lease: Pick<Lease, 'address' | 'mac'>): string {
  return `${lease.address} ${lease.mac ?? '-'}`;
}

/** Waits (briefly) until none of the leases (by `leaseKey`) is in the lease file; returns the keys still there. */
export async function waitUntilGone(leaseFile: string, keys: readonly string[], timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const present = new Set((await readLeaseFile(leaseFile)).leases.map(leaseKey));
    const left = keys.filter((key) => present.has(key));
    if (left.length === 0 || Date.now() >= deadline) return left;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
