/**
 * The `ip-discovery` capability module: a VM's addresses from the bridge's neighbour table (ARP and NDP),
 * optionally after a bounded probe sweep that makes the kernel resolve quiet VMs. Runs in worker threads of
 * the asking plugin; stateless.
 *
 * The bridge is the plugin's `bridge` option when set, else the bridge the caller names for the VM
 * (`vm.bridge`); with neither, discover and waitForChange throw ARP_NO_BRIDGE. The option wins because a host
 * admin who sets it means "this is where the VMs' neighbours are" for every caller.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { normalizeMac, readOnce, type DiscoveredAddress, type IpDiscoveryContext, type IpDiscoveryStrategy, type VmNetworkIdentity } from '../../core/capabilities/ip-discovery.ts';
import { CloudletError, z } from '../../core/plugin-api.ts';
import { arpError } from './errors.ts';
import { waitForNeighbourEvent, type MonitorOutcome } from './monitor.ts';
import { addressesForMac, hasIpv4Entry } from './neighbours.ts';
import { arpOptionsSchema, interfaceName, type ArpOptions } from './options.ts';
import { probeTargets, readBridgeSubnets, routedOnBridge, sweep, type Ipv4Subnet } from './probe.ts';
import { readNeighbourTable } from './table.ts';

/** Without `ip monitor`, waitForChange wakes the caller this often so it re-asks (polling). */
const POLL_WITHOUT_MONITOR_MS = 1_000;

/** The worker hands over validated options; parsing again fills defaults when a caller passes raw ones. */
export function optionsFrom(raw: unknown): ArpOptions {
  const parsed = arpOptionsSchema.safeParse(raw ?? {});
  if (!parsed.success) throw new CloudletError('PLUGIN_OPTIONS_INVALID', `ip-discovery-arp options: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

export function bridgeFor(options: ArpOptions, vm: VmNetworkIdentity): string {
  if (options.bridge !== undefined) return options.bridge;
  if (vm.bridge === undefined) {
    throw arpError('ARP_NO_BRIDGE', `ip-discovery-arp: VM ${vm.vm} is not on a bridge and the plugin has no "bridge" option; set options.bridge to the VM bridge`, {
      vm: vm.vm,
    });
  }
  if (!interfaceName.safeParse(vm.bridge).success) {
    throw arpError('ARP_NO_BRIDGE', `ip-discovery-arp: VM ${vm.vm} names bridge "${vm.bridge}", which is not a valid interface name`, { vm: vm.vm });
  }
  return vm.bridge;
}

async function discover(vm: VmNetworkIdentity, context: IpDiscoveryContext): Promise<DiscoveredAddress[]> {
  const options = optionsFrom(context.options);
  const bridge = bridgeFor(options, vm);
  const read = () => readNeighbourTable({ ipBinary: options.ipBinary, bridge, signal: context.signal, log: context.log });
  // The asks of one list share one read of the bridge's table (only the first read: a probe reads afresh).
  let table = await readOnce(context, `ip-discovery-arp:neigh:${bridge}`, read);
  // A passive caller (list-vms: every VM at once) gets the table as it is: a sweep per VM would flood the subnet.
  if (options.probe.enabled && !context.passive && !hasIpv4Entry(table.entries, vm.mac, options.includeStale) && (await probe(vm, bridge, options, context))) table = await read();
  return addressesForMac(table.entries, vm.mac, { includeStale: options.includeStale, bridge, table: table.source });
}

/** Sweeps the bridge subnet, stopping early once the VM's entry shows up; false when there was nothing to probe. */
async function probe(vm: VmNetworkIdentity, bridge: string, options: ArpOptions, context: IpDiscoveryContext): Promise<boolean> {
  const { ipBinary } = options;
  let subnets: Ipv4Subnet[];
  try {
    subnets = await readBridgeSubnets(ipBinary, bridge, context.signal);
  } catch (error) {
    if (!(error instanceof CloudletError)) throw error;
    context.log.warn({ code: error.code, bridge }, `ip-discovery-arp: not probing: ${error.message}`);
    return false;
  }
  const inSubnets = probeTargets(subnets, options.probe, bridge);
  if (inSubnets.length === 0) {
    context.log.debug({ bridge }, 'ip-discovery-arp: no IPv4 subnet with host addresses on the bridge; not probing');
    return false;
  }
  let targets: string[];
  try {
    targets = await routedOnBridge(ipBinary, bridge, inSubnets, context.signal);
  } catch (error) {
    if (!(error instanceof CloudletError)) throw error;
    context.log.warn({ code: error.code, bridge }, `ip-discovery-arp: not probing: ${error.message}`);
    return false;
  }
  if (targets.length < inSubnets.length) {
    context.log.warn(
      { bridge, skipped: inSubnets.length - targets.length },
      `ip-discovery-arp: ${inSubnets.length - targets.length} address(es) of the probe range are not routed out of ${bridge}; not probed (is the bridge down, or part of its subnet routed elsewhere?)`,
    );
  }
  if (targets.length === 0) return false;
  const stopWatching = new AbortController();
  const stopSweep = new AbortController();
  const mac = normalizeMac(vm.mac);
  const watching = waitForNeighbourEvent({ ipBinary, bridge, mac, timeoutMs: Infinity, signal: AbortSignal.any([context.signal, stopWatching.signal]) });
  void watching.then((outcome) => outcome.kind === 'change' && stopSweep.abort());
  try {
    const swept = await sweep(targets, options.probe.ratePerSecond, AbortSignal.any([context.signal, stopSweep.signal]));
    const outcome = await settle(watching, options.probe.settleMs, context.signal);
    context.log.debug({ bridge, mac, targets: targets.length, ...swept, outcome: outcome.kind }, 'ip-discovery-arp: probe sweep done');
  } finally {
    stopWatching.abort();
    await watching;
  }
  return true;
}

/** Waits up to settleMs for the VM's entry (or just settleMs when `ip monitor` cannot run). */
async function settle(watching: Promise<MonitorOutcome>, settleMs: number, signal: AbortSignal): Promise<MonitorOutcome | { kind: 'settled' }> {
  const timer = new AbortController();
  const settled = sleep(settleMs, { kind: 'settled' } as const, { signal: AbortSignal.any([signal, timer.signal]) }).catch(() => ({ kind: 'settled' }) as const);
  try {
    const first = await Promise.race([watching, settled]);
    if (first.kind === 'unavailable') await settled;
    return first;
  } finally {
    timer.abort();
  }
}

async function waitForChange(vm: VmNetworkIdentity, context: IpDiscoveryContext & { timeoutMs: number }): Promise<void> {
  const options = optionsFrom(context.options);
  const bridge = bridgeFor(options, vm);
  const started = performance.now();
  // An entry that appeared after the caller's last read but before `ip monitor` listened would be missed:
  // once the monitor has started, read the table once more, and stop waiting if the VM is there now.
  const found = new AbortController();
  const readAgain = async () => {
    const table = await readNeighbourTable({ ipBinary: options.ipBinary, bridge, signal: context.signal, log: context.log }).catch(() => undefined);
    // Only an address the caller reports ends the wait: a link-local entry (fe80::, 169.254/16) it drops
    // would end every wait at once, and the caller would start the next one straight away, for its whole
    // timeout. (A caller that wants link-local addresses still re-asks on its tick.)
    const entries = table ? addressesForMac(table.entries, vm.mac, { includeStale: options.includeStale, bridge, table: table.source }) : [];
    if (entries.some((address) => address.scope === 'global')) found.abort();
  };
  const outcome = await waitForNeighbourEvent({
    ipBinary: options.ipBinary,
    bridge,
    mac: vm.mac,
    timeoutMs: context.timeoutMs,
    signal: AbortSignal.any([context.signal, found.signal]),
    onSpawn: () => void readAgain(),
  });
  if (outcome.kind !== 'unavailable') return;
  context.log.warn({ bridge }, `ip-discovery-arp: cannot watch the neighbour table (${outcome.reason}); the caller will poll`);
  const left = Math.min(context.timeoutMs - (performance.now() - started), POLL_WITHOUT_MONITOR_MS);
  if (left > 0) await sleep(left, undefined, { signal: context.signal }).catch(() => undefined);
}

const strategy: IpDiscoveryStrategy = { discover, waitForChange };
export default strategy;
