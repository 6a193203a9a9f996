/**
 * The kernel's neighbour table (IPv4 ARP and IPv6 NDP) as entries, parsed from `ip -s -j neigh show dev BRIDGE
 * nud all` or, for IPv4 only, from /proc/net/arp; and the addresses an entry list holds for one MAC.
 * Pure functions: reading the table is table.ts's job.
 */
import { isIP } from 'node:net';
import { normalizeMac, scopeOf, type AddressFamily, type DiscoveredAddress } from '../../core/capabilities/ip-discovery.ts';
import { z } from '../../core/plugin-api.ts';

export const SOURCE = 'ip-discovery-arp';

/**
 * fresh: the kernel holds the mapping as valid now (REACHABLE, DELAY, PROBE, PERMANENT, NOARP).
 * stale: once valid, unconfirmed since (STALE). unknown: /proc/net/arp says "complete" and cannot tell which.
 * unusable: no valid mapping (FAILED, INCOMPLETE, NONE) — never reported.
 */
export type Freshness = 'fresh' | 'stale' | 'unknown' | 'unusable';

export interface NeighbourEntry {
  address: string;
  family: AddressFamily;
  /** Lowercase; null when the entry has no link-layer address (INCOMPLETE, FAILED). */
  mac: string | null;
  /** The state that decided `freshness`, e.g. REACHABLE; COMPLETE for a /proc/net/arp entry. */
  state: string;
  freshness: Freshness;
  ageMs: number | null;
}

export type TableSource = 'ip-neigh' | 'proc-net-arp';

const NEVER_STATES = ['FAILED', 'INCOMPLETE'];
const FRESH_STATES = ['REACHABLE', 'DELAY', 'PROBE', 'PERMANENT', 'NOARP'];
/** Static entries: the kernel never confirms them, so their counters say nothing about the VM. */
const STATIC_STATES = ['PERMANENT', 'NOARP'];

/** Decides from an entry's state list (iproute2 prints a list; in practice it holds one state). */
export function classifyStates(states: readonly string[]): { state: string; freshness: Freshness } {
  const upper = states.map((s) => s.toUpperCase());
  const never = upper.find((s) => NEVER_STATES.includes(s));
  if (never !== undefined) return { state: never, freshness: 'unusable' };
  const fresh = upper.find((s) => FRESH_STATES.includes(s));
  if (fresh !== undefined) return { state: fresh, freshness: 'fresh' };
  if (upper.includes('STALE')) return { state: 'STALE', freshness: 'stale' };
  return { state: upper[0] ?? 'NONE', freshness: 'unusable' };
}

/** One element of iproute2's JSON; other keys (refcnt, probes, router, dev) are ignored. */
const ipNeighJsonEntry = z.object({
  dst: z.string(),
  lladdr: z.string().optional(),
  state: z.array(z.string()).optional(),
  // With -s: seconds (iproute2 divides the kernel's clock_t by USER_HZ and prints whole seconds; 6.1.0 here).
  used: z.number().nonnegative().optional(),
  confirmed: z.number().nonnegative().optional(),
  updated: z.number().nonnegative().optional(),
});

/**
 * Parses `ip [-s] -j neigh show dev BRIDGE` output. Elements that are not neighbour entries (or have an
 * address that is not an IP address) are skipped; output that is not a JSON array throws a SyntaxError/TypeError.
 */
export function parseIpNeighJson(text: string): NeighbourEntry[] {
  const parsed: unknown = JSON.parse(text.trim() === '' ? '[]' : text);
  if (!Array.isArray(parsed)) throw new TypeError('ip -j neigh printed something other than a JSON array');
  const entries: NeighbourEntry[] = [];
  for (const element of parsed) {
    const result = ipNeighJsonEntry.safeParse(element);
    if (!result.success) continue;
    const raw = result.data;
    const version = isIP(raw.dst);
    if (version === 0) continue;
    const { state, freshness } = classifyStates(raw.state ?? []);
    entries.push({
      address: raw.dst,
      family: version === 4 ? 'ipv4' : 'ipv6',
      mac: raw.lladdr === undefined ? null : normalizeMac(raw.lladdr),
      state,
      freshness,
      ageMs: STATIC_STATES.includes(state) ? null : evidenceAgeMs(raw),
    });
  }
  return entries;
}

/**
 * `confirmed` is the time since the neighbour last proved reachable; `updated`, since its address was learned
 * or its state changed. A just-learned entry (e.g. dnsmasq's after a lease) has `updated` 0 and `confirmed`
 * ≥ 60 (the kernel back-dates new entries), so the smaller of the two is the evidence's age — a lower bound,
 * since a timer turning REACHABLE into STALE also resets `updated`. Whole seconds.
 */
function evidenceAgeMs(raw: { confirmed?: number | undefined; updated?: number | undefined }): number | null {
  const counters = [raw.confirmed, raw.updated].filter((n): n is number => n !== undefined);
  return counters.length === 0 ? null : Math.min(...counters) * 1000;
}

const ATF_COM = 0x02;
const ATF_PERM = 0x04;

/**
 * Parses /proc/net/arp (IPv4 only): `IP  HW-type  Flags  HW-address  Mask  Device`. It has no NUD states:
 * permanent entries are PERMANENT, other complete ones COMPLETE (freshness unknown), the rest unusable —
 * a FAILED entry keeps its old MAC there with flags 0x0, so the flags decide, not the address.
 */
export function parseProcNetArp(text: string, device: string): NeighbourEntry[] {
  const entries: NeighbourEntry[] = [];
  for (const line of text.split('\n').slice(1)) {
    const [address, , flagsText, mac, , dev] = line.trim().split(/\s+/);
    if (address === undefined || flagsText === undefined || mac === undefined || dev !== device || isIP(address) !== 4) continue;
    const flags = Number.parseInt(flagsText, 16);
    if (Number.isNaN(flags)) continue;
    const state = flags & ATF_PERM ? 'PERMANENT' : flags & ATF_COM ? 'COMPLETE' : 'INCOMPLETE';
    const freshness: Freshness = state === 'PERMANENT' ? 'fresh' : state === 'COMPLETE' ? 'unknown' : 'unusable';
    entries.push({ address, family: 'ipv4', mac: freshness === 'unusable' ? null : normalizeMac(mac), state, freshness, ageMs: null });
  }
  return entries;
}

export interface AddressesForMacOptions {
  includeStale: boolean;
  bridge: string;
  table: TableSource;
}

const FRESHNESS_RANK: Record<Freshness, number> = { fresh: 0, unknown: 1, stale: 2, unusable: 3 };
const SCOPE_RANK = { global: 0, 'link-local': 1, loopback: 2 } as const;

/**
 * The addresses the entries hold for `mac`: fresh first, then unknown (/proc/net/arp), then stale (only with
 * includeStale); within each, IPv4 before IPv6, global before link-local, newest evidence first.
 * Unusable entries are never reported, and with includeStale false neither are stale or unknown ones.
 */
export function addressesForMac(entries: readonly NeighbourEntry[], mac: string, options: AddressesForMacOptions): DiscoveredAddress[] {
  const wanted = normalizeMac(mac);
  return entries
    .filter((e) => e.mac === wanted && e.freshness !== 'unusable' && (options.includeStale || e.freshness === 'fresh'))
    .map((e) => ({ entry: e, scope: scopeOf(e.address, e.family) }))
    .sort(
      (a, b) =>
        FRESHNESS_RANK[a.entry.freshness] - FRESHNESS_RANK[b.entry.freshness] ||
        (a.entry.family === b.entry.family ? 0 : a.entry.family === 'ipv4' ? -1 : 1) ||
        SCOPE_RANK[a.scope] - SCOPE_RANK[b.scope] ||
        (a.entry.ageMs ?? Number.MAX_SAFE_INTEGER) - (b.entry.ageMs ?? Number.MAX_SAFE_INTEGER),
    )
    .map(({ entry, scope }) => ({
      address: entry.address,
      family: entry.family,
      scope,
      source: SOURCE,
      ageMs: entry.ageMs,
      detail: { state: entry.state, fresh: entry.freshness === 'fresh', bridge: options.bridge, table: options.table },
    }));
}

/**
 * Whether the entries hold an IPv4 mapping for `mac` that would be reported (the probe's trigger is its
 * absence): with includeStale false only a fresh one counts, or an old STALE entry would hold back the very
 * probe that refreshes it, and the VM would never be found.
 */
export function hasIpv4Entry(entries: readonly NeighbourEntry[], mac: string, includeStale: boolean): boolean {
  const wanted = normalizeMac(mac);
  return entries.some((e) => e.family === 'ipv4' && e.mac === wanted && e.freshness !== 'unusable' && (includeStale || e.freshness === 'fresh'));
}
