/**
 * dnsmasq's lease file, parsed. Pure: text in, leases out; reading the file and logging are the caller's.
 *
 * What dnsmasq writes (lease.c, `lease_update_file`): one IPv4 lease a line,
 *   `expiry mac ip hostname client-id`
 * then, when DHCPv6 is on, a `duid <server-duid>` line and one IPv6 lease a line,
 *   `expiry [T]iaid ip hostname client-duid`
 * `expiry` is epoch seconds (0: never expires), `*` stands for "no hostname" / "no client id", and ids are
 * colon-separated hex. Like dnsmasq's own reader, a line is classified by its address family; the `duid`
 * line only says where the IPv6 part starts.
 */
import { isIPv4, isIPv6 } from 'node:net';

export interface Lease {
  family: 'ipv4' | 'ipv6';
  address: string;
  /**
   * Lowercase. IPv4: the client's hardware address as dnsmasq wrote it (a non-Ethernet one keeps its `NN-`
   * type prefix and so never equals a MAC). IPv6: the MAC inside the client's DUID, or null (see macFromDuid).
   */
  mac: string | null;
  /** Epoch seconds; 0 means the lease never expires. */
  expiry: number;
  hostname: string | null;
  /** IPv4: the DHCP client id; IPv6: the client's DUID. Lowercase hex with colons. */
  clientId: string | null;
  /** IPv6 only: the identity association id, and whether it is a temporary address (IA_TA). */
  iaid?: number;
  temporary?: boolean;
  /** 1-based line number in the file. */
  line: number;
}

export interface SkippedLine {
  /** 1-based line number. */
  line: number;
  text: string;
  reason: string;
}

export interface ParsedLeases {
  v4: Lease[];
  v6: Lease[];
  /** The server's DUID from the `duid` line, if there is one. */
  serverDuid: string | null;
  /** Malformed lines, left out. Blank lines and `#` comments are not listed. */
  skipped: SkippedLine[];
}

const HEX_BYTES = /^[0-9a-f]{2}(?::[0-9a-f]{2})*$/;
/** dnsmasq prefixes the hardware type (`NN-`) when it is not Ethernet or the address is empty. */
const HARDWARE_ADDRESS = /^(?:[0-9a-f]{2}-)?(?:[0-9a-f]{2}(?::[0-9a-f]{2})*)?$/;
const EXPIRY = /^[0-9]{1,12}$/;
const IAID = /^(T?)([0-9]{1,10})$/;
/** Hostnames dnsmasq accepts from clients: DNS labels; `*` means none. */
const HOSTNAME = /^[a-zA-Z0-9_.-]{1,255}$/;

export function parseLeases(text: string): ParsedLeases {
  const parsed: ParsedLeases = { v4: [], v6: [], serverDuid: null, skipped: [] };
  text.split('\n').forEach((raw, index) => {
    const trimmed = raw.trim();
    if (trimmed === '' || trimmed.startsWith('#')) return;
    const line = index + 1;
    const fields = trimmed.split(/\s+/);
    const result = fields[0] === 'duid' ? parseDuidLine(fields) : parseLeaseLine(fields, line);
    if (typeof result === 'string') parsed.skipped.push({ line, text: trimmed.slice(0, 200), reason: result });
    else if ('duid' in result) parsed.serverDuid = result.duid;
    else parsed[result.family === 'ipv4' ? 'v4' : 'v6'].push(result);
  });
  return parsed;
}

/** A lease, or why the line is not one. */
function parseLeaseLine(fields: string[], line: number): Lease | string {
  if (fields.length !== 5) return `expected 5 fields (expiry, mac or iaid, address, hostname, client id), found ${fields.length}`;
  const [expiryField, idField, address, hostnameField, clientField] = fields as [string, string, string, string, string];
  if (!EXPIRY.test(expiryField)) return 'the expiry is not a number of seconds';
  const clientId = clientField === '*' ? null : clientField.toLowerCase();
  if (clientId !== null && !HEX_BYTES.test(clientId)) return 'the client id is not colon-separated hex or "*"';
  if (hostnameField !== '*' && !HOSTNAME.test(hostnameField)) return 'the hostname has characters a hostname cannot have';
  const common = { expiry: Number(expiryField), hostname: hostnameField === '*' ? null : hostnameField, clientId, line };

  if (isIPv4(address)) {
    const mac = idField.toLowerCase();
    if (mac === '' || !HARDWARE_ADDRESS.test(mac)) return 'the hardware address is not colon-separated hex';
    return { family: 'ipv4', address, mac, ...common };
  }
  if (isIPv6(address)) {
    const iaid = IAID.exec(idField);
    if (!iaid) return 'the IAID of an IPv6 lease is not a number (with an optional "T" for a temporary address)';
    const mac = clientId === null ? null : macFromDuid(clientId);
    return { family: 'ipv6', address: address.toLowerCase(), mac, ...common, iaid: Number(iaid[2]), temporary: iaid[1] === 'T' };
  }
  return 'the address is neither IPv4 nor IPv6';
}

function parseDuidLine(fields: string[]): { duid: string } | string {
  const duid = fields[1]?.toLowerCase();
  if (fields.length !== 2 || duid === undefined || !HEX_BYTES.test(duid)) return 'a "duid" line must be "duid" and the server DUID in colon-separated hex';
  return { duid };
}

/**
 * The MAC an IPv6 client's DUID carries, or null. An IPv6 lease has no hardware address: dnsmasq keeps the
 * IAID and the client's DUID. We match a VM by the DUID only when it is DUID-LLT (type 1: hardware type,
 * time, link-layer address) or DUID-LL (type 3: hardware type, link-layer address) with hardware type 1
 * (Ethernet), whose last 6 bytes are a MAC. That is the guest's MAC for a VM with one NIC; a guest with
 * several NICs may build its DUID from another NIC's MAC, and guests using DUID-EN or DUID-UUID (systemd's
 * default, for instance) are not matched at all: their IPv6 leases are simply not reported.
 */
export function macFromDuid(duid: string): string | null {
  const bytes = duid.toLowerCase().split(':');
  const type = bytes.slice(0, 2).join(':');
  const hardwareType = bytes.slice(2, 4).join(':');
  if (hardwareType !== '00:01') return null;
  if (type === '00:01' && bytes.length === 14) return bytes.slice(8).join(':');
  if (type === '00:03' && bytes.length === 10) return bytes.slice(4).join(':');
  return null;
}

/** dnsmasq drops a lease once its expiry has passed; 0 means infinite. */
export function isExpired(lease: Pick<Lease, 'expiry'>, nowMs: number): boolean {
  return lease.expiry !== 0 && lease.expiry * 1000 < nowMs;
}

/**
 * The live leases of one MAC (compared lowercase), IPv4 first, the longest-lived first within a family. Only
 * the asked MAC is ever matched, so a lease of a machine that is no VM of ours is never reported.
 */
export function leasesForMac(parsed: Pick<ParsedLeases, 'v4' | 'v6'>, mac: string, nowMs: number): Lease[] {
  const wanted = mac.trim().toLowerCase();
  const live = (leases: Lease[]) =>
    leases.filter((lease) => lease.mac === wanted && !isExpired(lease, nowMs)).sort((a, b) => expirySortKey(b) - expirySortKey(a));
  return [...live(parsed.v4), ...live(parsed.v6)];
}

function expirySortKey(lease: Lease): number {
  return lease.expiry === 0 ? Number.MAX_SAFE_INTEGER : lease.expiry;
}
