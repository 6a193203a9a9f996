/**
 * Active probing: one small UDP datagram to each address of the bridge's IPv4 subnet makes the kernel resolve
 * it by ARP, so a quiet VM's entry appears. Bounded by `maxAddresses`, paced at `ratePerSecond`, and only ever
 * aimed at on-link addresses of the bridge: never its network, broadcast or own addresses, never a range
 * outside the bridge's subnets, and only addresses the kernel routes straight out of the bridge (routedOnBridge):
 * a datagram to any other would leave by another interface, off the host.
 * IPv6 is not probed: an all-nodes echo (ping ff02::1%BRIDGE) needs ICMPv6 sockets Node does not offer, and a
 * multicast UDP datagram draws no reply (RFC 4443 forbids errors to multicast), so it would create no entries.
 */
import { createSocket } from 'node:dgram';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from '../../core/plugin-api.ts';
import { arpError } from './errors.ts';
import type { ProbeOptions } from './options.ts';
import { runProgram } from './run.ts';

/** The discard service: nothing listens, or something that ignores what it gets. */
export const PROBE_PORT = 9;
const PROBE_PAYLOAD = new TextEncoder().encode('cloudlet ip-discovery-arp probe');

export interface Ipv4Subnet {
  /** The bridge's own address in this subnet. */
  address: string;
  prefixLength: number;
}

const ipAddrJson = z.array(
  z.object({
    addr_info: z.array(z.object({ family: z.string(), local: z.string(), prefixlen: z.number().int().min(0).max(128) })).default([]),
  }),
);

/** Parses `ip -j addr show dev BRIDGE`: the bridge's IPv4 addresses with their prefix lengths. */
export function parseBridgeSubnets(text: string): Ipv4Subnet[] {
  const links = ipAddrJson.parse(JSON.parse(text));
  return links.flatMap((link) =>
    link.addr_info.filter((info) => info.family === 'inet' && info.prefixlen <= 32).map((info) => ({ address: info.local, prefixLength: info.prefixlen })),
  );
}

export async function readBridgeSubnets(ipBinary: string, bridge: string, signal: AbortSignal): Promise<Ipv4Subnet[]> {
  const argv = [ipBinary, '-j', 'addr', 'show', 'dev', bridge];
  const result = await runProgram(argv, { timeoutMs: 10_000, signal }).catch((error: unknown) => {
    if (signal.aborted) throw error;
    throw arpError('ARP_READ_FAILED', `cannot run "${argv.join(' ')}": ${(error as Error).message}`, { bridge }, error);
  });
  if (result.code !== 0) throw arpError('ARP_READ_FAILED', `"${argv.join(' ')}" exited ${result.code}: ${result.stderr.trim()}`, { bridge });
  try {
    return parseBridgeSubnets(result.stdout);
  } catch (error) {
    throw arpError('ARP_READ_FAILED', `"${argv.join(' ')}" printed something unexpected: ${(error as Error).message}`, { bridge }, error);
  }
}

export function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((n, octet) => n * 256 + Number(octet), 0);
}

export function numberToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function rangeOf(address: string, prefixLength: number): { first: number; last: number } {
  const size = 2 ** (32 - prefixLength);
  const first = Math.floor(ipv4ToNumber(address) / size) * size;
  return { first, last: first + size - 1 };
}

/** `10.77.0.0/25` → its first and last address (options.ts validated the form). */
function cidrRange(cidr: string): { first: number; last: number } {
  const [address = '', prefix = ''] = cidr.split('/');
  return rangeOf(address, Number(prefix));
}

/**
 * The addresses to probe, lowest first, at most `maxAddresses`: each bridge subnet's hosts (not its network or
 * broadcast address; /31 and /32 subnets have none), narrowed to `cidr` when given, minus the bridge's own
 * addresses. A `cidr` outside every bridge subnet is a configuration error.
 */
export function probeTargets(subnets: readonly Ipv4Subnet[], options: Pick<ProbeOptions, 'maxAddresses' | 'cidr'>, bridge: string): string[] {
  const own = new Set(subnets.map((s) => ipv4ToNumber(s.address)));
  const wanted = options.cidr === undefined ? undefined : cidrRange(options.cidr);
  const ranges = subnets.map((s) => ({ prefixLength: s.prefixLength, subnet: rangeOf(s.address, s.prefixLength) }));
  const hostRanges = ranges.filter((r) => r.prefixLength <= 30).map((r) => ({ first: r.subnet.first + 1, last: r.subnet.last - 1, subnet: r.subnet }));
  // Inside a /31 or /32 subnet there is nobody else to probe: nothing, not a configuration error.
  if (wanted !== undefined && !ranges.some((r) => wanted.first >= r.subnet.first && wanted.last <= r.subnet.last)) {
    const known = subnets.map((s) => `${numberToIpv4(rangeOf(s.address, s.prefixLength).first)}/${s.prefixLength}`).join(', ') || 'none';
    throw arpError('ARP_PROBE_INVALID', `probe.cidr ${options.cidr} is not inside an IPv4 subnet of bridge ${bridge} (${known}); probes only go to addresses on the bridge`, {
      bridge,
      cidr: options.cidr,
    });
  }
  const targets: string[] = [];
  const seen = new Set<number>();
  for (const range of hostRanges) {
    const first = Math.max(range.first, wanted?.first ?? range.first);
    const last = Math.min(range.last, wanted?.last ?? range.last);
    for (let n = first; n <= last && targets.length < options.maxAddresses; n++) {
      if (own.has(n) || seen.has(n)) continue;
      seen.add(n);
      targets.push(numberToIpv4(n));
    }
  }
  return targets;
}

const routeGet = z.array(z.object({ dst: z.string(), dev: z.string().optional(), gateway: z.string().optional(), type: z.string().optional() }));

/**
 * The targets the kernel would send straight out of `bridge`: asked of the kernel itself (`ip route get`,
 * one `ip -batch` for all), since the bridge's subnet does not say it. A more specific route elsewhere, a
 * policy rule, or the bridge being down (its subnet then goes by the default route) would send a probe
 * off the host. A target whose route cannot be read is left out.
 */
export async function routedOnBridge(ipBinary: string, bridge: string, targets: readonly string[], signal: AbortSignal): Promise<string[]> {
  if (targets.length === 0) return [];
  const argv = [ipBinary, '-j', '-force', '-batch', '-'];
  const result = await runProgram(argv, { timeoutMs: 30_000, signal, input: targets.map((target) => `route get ${target}\n`).join('') }).catch((error: unknown) => {
    if (signal.aborted) throw error;
    throw arpError('ARP_READ_FAILED', `cannot run "${argv.join(' ')}": ${(error as Error).message}`, { bridge }, error);
  });
  const direct = new Set<string>();
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('[')) continue;
    let routes: z.infer<typeof routeGet>;
    try {
      routes = routeGet.parse(JSON.parse(line));
    } catch {
      continue;
    }
    for (const route of routes) if (route.dev === bridge && route.gateway === undefined && (route.type ?? 'unicast') === 'unicast') direct.add(route.dst);
  }
  return targets.filter((target) => direct.has(target));
}

export interface SweepResult {
  sent: number;
  failed: number;
  /** True when the signal stopped the sweep before every target had its datagram. */
  stopped: boolean;
}

/** Sends one datagram to each target, never faster than `ratePerSecond`; resolves early (not rejects) when the signal aborts. */
export async function sweep(targets: readonly string[], ratePerSecond: number, signal: AbortSignal): Promise<SweepResult> {
  const socket = createSocket('udp4');
  // Asynchronous send errors (e.g. the kernel's neighbour table is full) must not crash the worker.
  socket.on('error', () => {});
  const result: SweepResult = { sent: 0, failed: 0, stopped: false };
  const sends: Promise<void>[] = [];
  const interval = 1000 / ratePerSecond;
  let due = performance.now();
  try {
    for (const target of targets) {
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait, undefined, { signal }).catch(() => undefined);
      // Never faster than the rate: time lost to late timers or a busy event loop is not made up with a burst.
      due = Math.max(due, performance.now()) + interval;
      if (signal.aborted) {
        result.stopped = true;
        break;
      }
      sends.push(
        new Promise<void>((resolve) => {
          socket.send(PROBE_PAYLOAD, PROBE_PORT, target, (error) => {
            if (error) result.failed++;
            else result.sent++;
            resolve();
          });
        }),
      );
    }
    await Promise.all(sends);
  } finally {
    socket.close();
  }
  return result;
}
