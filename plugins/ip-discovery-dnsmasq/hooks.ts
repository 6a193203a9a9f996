/**
 * The plugin's lifecycle hooks: in managed mode, `start` runs dnsmasq on the bridge and `stop` ends it. Hooks
 * run in the agent's main thread; the running supervisor is kept here between the two, by lease file (one
 * dnsmasq per lease file, so two agents in one process — tests — do not share one).
 */
import { networkInterfaces } from 'node:os';
import { CloudletError, type PluginHookContext } from '../../core/plugin-api.ts';
import { ManagedDnsmasq } from './managed-dnsmasq.ts';
import type { DnsmasqOptions, ManagedOptions } from './options.ts';

const running = new Map<string, ManagedDnsmasq>();

export async function startManagedDnsmasq(context: PluginHookContext<DnsmasqOptions>): Promise<void> {
  const { managed, leaseFile } = context.options;
  if (!managed) return;
  if (running.has(leaseFile)) {
    throw new CloudletError('DNSMASQ_START_FAILED', `a managed dnsmasq already writes ${leaseFile} in this process`, { details: { leaseFile } });
  }
  const problem = rangeProblem(managed);
  if (problem) context.log.warn({ bridge: managed.bridge, range: [managed.rangeStart, managed.rangeEnd] }, problem);
  running.set(leaseFile, await ManagedDnsmasq.start({ managed, leaseFile, log: context.log }));
}

export async function stopManagedDnsmasq(context: PluginHookContext<DnsmasqOptions>): Promise<void> {
  const supervisor = running.get(context.options.leaseFile);
  if (!supervisor) return;
  running.delete(context.options.leaseFile);
  await supervisor.stop();
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
