/**
 * The `ip-discovery` capability module: a VM's addresses from dnsmasq's lease file, matched by the VM's MAC.
 * Runs in worker threads (qemu-backend's handlers load it): stateless, reads the file on every call (once
 * per list when the caller shares a memo: `readOnce`).
 */
import { readOnce, scopeOf, type DiscoveredAddress, type IpDiscoveryContext, type IpDiscoveryStrategy, type VmNetworkIdentity } from '../../core/capabilities/ip-discovery.ts';
import { dnsmasqError } from './errors.ts';
import { readLeaseText } from './lease-file.ts';
import { leasesForMac, parseLeases, type Lease, type ParsedLeases } from './leases.ts';
import { waitForLeaseFileChange } from './lease-watch.ts';
import { knownLeaseSeconds, type DnsmasqOptions } from './options.ts';

export const SOURCE = 'ip-discovery-dnsmasq';
/** How many skipped lines one warning shows; the count says how many there were. */
const SKIPPED_SHOWN = 5;

const strategy: IpDiscoveryStrategy<DnsmasqOptions> = {
  async discover(vm, context) {
    const { leaseFile } = context.options;
    // The asks of one list (list-vms) share one read, one parse and one warning.
    const parsed = await readOnce(context, `${SOURCE}:leases:${leaseFile}`, async () => {
      const leases = parseLeases(await readLeaseFile(leaseFile, context.signal));
      warnAboutSkipped(leases, leaseFile, context);
      return leases;
    });
    const now = Date.now();
    const leaseSeconds = knownLeaseSeconds(context.options);
    return leasesForMac(parsed, vm.mac, now).map((lease) => toAddress(lease, leaseSeconds, now, leaseFile));
  },

  // Any write of the file wakes the caller, not only one about this VM: the caller asks again, and a read is cheap.
  async waitForChange(_vm: VmNetworkIdentity, context) {
    await waitForLeaseFileChange(context.options.leaseFile, {
      timeoutMs: context.timeoutMs,
      signal: context.signal,
      onWatchError: (error) => context.log.warn({ err: error, leaseFile: context.options.leaseFile }, 'cannot watch the dnsmasq lease file; callers fall back to asking again'),
    });
  },
};

export default strategy;

/** The file's text; empty when it does not exist yet (dnsmasq not started, or no lease handed out). */
async function readLeaseFile(leaseFile: string, signal: AbortSignal): Promise<string> {
  try {
    return (await readLeaseText(leaseFile, signal)) ?? '';
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (signal.aborted) throw signal.reason;
    throw dnsmasqError('DNSMASQ_LEASES_UNREADABLE', `cannot read the dnsmasq lease file ${leaseFile}: ${(error as Error).message}`, { leaseFile, ...(code && { errno: code }) }, error);
  }
}

function warnAboutSkipped(parsed: ParsedLeases, leaseFile: string, context: IpDiscoveryContext<DnsmasqOptions>): void {
  if (parsed.skipped.length === 0) return;
  context.log.warn(
    { leaseFile, skipped: parsed.skipped.slice(0, SKIPPED_SHOWN), count: parsed.skipped.length },
    `skipped ${parsed.skipped.length} malformed line(s) in the dnsmasq lease file`,
  );
}

/**
 * dnsmasq records when a lease expires, not when it was written: with the lease time known, the lease was
 * (re)written `leaseTime - (expiry - now)` ago. Unknown lease time or an infinite lease: no age.
 */
export function leaseAgeMs(lease: Pick<Lease, 'expiry'>, leaseSeconds: number | null, nowMs: number): number | null {
  if (leaseSeconds === null || lease.expiry === 0) return null;
  return Math.max(0, Math.round(leaseSeconds * 1000 - (lease.expiry * 1000 - nowMs)));
}

function toAddress(lease: Lease, leaseSeconds: number | null, nowMs: number, leaseFile: string): DiscoveredAddress {
  const detail: Record<string, unknown> = {
    leaseFile,
    expiresAt: lease.expiry === 0 ? null : new Date(lease.expiry * 1000).toISOString(),
    hostname: lease.hostname,
    clientId: lease.clientId,
  };
  if (lease.family === 'ipv6') Object.assign(detail, { iaid: lease.iaid, temporary: lease.temporary });
  return {
    address: lease.address,
    family: lease.family,
    scope: scopeOf(lease.address, lease.family),
    source: SOURCE,
    ageMs: leaseAgeMs(lease, leaseSeconds, nowMs),
    detail,
  };
}
