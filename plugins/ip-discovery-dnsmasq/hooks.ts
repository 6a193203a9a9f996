/**
 * The plugin's lifecycle hooks: in managed mode, `start` runs dnsmasq on the bridge and `stop` ends it. Hooks
 * run in the agent's main thread; the running supervisor is kept here between the two, by agent (its host
 * identity), so that an agent's stop ends only the dnsmasq it started: with two agents in one process (tests,
 * embedders), a second agent whose start was refused must not stop the first one's.
 */
import { networkInterfaces } from 'node:os';
import { CloudletError, type HostIdentity, type PluginHookContext } from '../../core/plugin-api.ts';
import { ManagedDnsmasq } from './managed-dnsmasq.ts';
import type { DnsmasqOptions, ManagedOptions } from './options.ts';

const running = new WeakMap<HostIdentity, ManagedDnsmasq>();
/** Lease files a supervisor of this process writes: one dnsmasq per lease file. */
const leaseFilesInUse = new Set<string>();

export async function startManagedDnsmasq(context: PluginHookContext<DnsmasqOptions>): Promise<void> {
  const { managed, leaseFile } = context.options;
  if (!managed) return;
  if (leaseFilesInUse.has(leaseFile)) {
    throw new CloudletError('DNSMASQ_START_FAILED', `a managed dnsmasq already writes ${leaseFile} in this process`, { details: { leaseFile } });
  }
  const problem = rangeProblem(managed);
  if (problem) context.log.warn({ bridge: managed.bridge, range: [managed.rangeStart, managed.rangeEnd] }, problem);
  leaseFilesInUse.add(leaseFile);
  try {
    running.set(context.host, await ManagedDnsmasq.start({ managed, leaseFile, log: context.log }));
  } catch (error) {
    leaseFilesInUse.delete(leaseFile);
    throw error;
  }
}

export async function stopManagedDnsmasq(context: PluginHookContext<DnsmasqOptions>): Promise<void> {
  const supervisor = running.get(context.host);
  if (!supervisor) return;
  running.delete(context.host);
  await supervisor.stop();
  leaseFilesInUse.delete(context.options.leaseFile);
  context.log.info({ leaseFile: context.options.leaseFile }, 'dnsmasq stopped');
}

/**
 * dnsmasq hands out addresses only from a range in the subnet of an address of the interface; otherwise it
 * starts fine and then ignores every request. Says so up front instead.
 */
export function rangeProblem(managed: ManagedOptions, interfaces = networkInterfaces()): string | undefined {
  const addresses = (interfaces[managed.bridge] ?? []).filter((a) => a.family === 'IPv4');
  if (addresses.length === 0) return `bridge ${managed.bridge} has no IPv4 address: dnsmasq will hand out no lease until it has one in the range's subnet`;
  const inSubnet = (address: string, netmask: string, other: string) => (toNumber(address) & toNumber(netmask)) === (toNumber(other) & toNumber(netmask));
  const covering = addresses.some((a) => inSubnet(a.address, a.netmask, managed.rangeStart) && inSubnet(a.address, a.netmask, managed.rangeEnd));
  if (!covering) {
    return `the DHCP range ${managed.rangeStart}-${managed.rangeEnd} is outside the subnets of ${managed.bridge} (${addresses.map((a) => a.cidr).join(', ')}): dnsmasq will hand out no lease`;
  }
  return undefined;
}

function toNumber(address: string): number {
  return address.split('.').reduce((sum, octet) => ((sum << 8) | Number(octet)) >>> 0, 0);
}
