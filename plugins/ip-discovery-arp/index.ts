/**
 * ip-discovery-arp: tells a VM's addresses from the kernel's neighbour table on the VM bridge (IPv4 ARP and
 * IPv6 NDP). Offers the `ip-discovery` capability; the VM backend loads strategy.ts in its own workers.
 * No messages, no hooks. In short (details beside the code):
 * - Bridge: the `bridge` option, else the caller's `vm.bridge`, else ARP_NO_BRIDGE (strategy.ts).
 * - Table: `ip -s -j neigh show dev BRIDGE nud all`; /proc/net/arp (IPv4, no states) when `ip` is missing or
 *   knows no `-j` (table.ts). REACHABLE/DELAY/PROBE/PERMANENT/NOARP are fresh, STALE is reported after them with
 *   `detail.state` (unless includeStale is false), FAILED/INCOMPLETE never (neighbours.ts).
 * - ageMs: the smaller of iproute2's `confirmed` and `updated` counters (whole seconds with iproute2 6.1), null
 *   for static entries and without counters.
 * - Probe (off by default): when the VM's MAC has no IPv4 entry, one UDP datagram to port 9 of each bridge
 *   subnet address, bounded and paced, then the table is read again; IPv6 is not probed (probe.ts).
 * - waitForChange: `ip monitor neigh dev BRIDGE` until a line names the MAC (monitor.ts).
 */
import { definePlugin } from '../../core/plugin-api.ts';
import { arpErrors } from './errors.ts';
import { arpOptionsSchema } from './options.ts';

export default definePlugin({
  name: 'ip-discovery-arp',
  version: '1.0.0',
  api: '^1.7.0',
  description: "A VM's addresses from the bridge's neighbour table (ARP/NDP), with optional bounded probing.",
  provides: ['ip-discovery'],
  capabilityModules: { 'ip-discovery': new URL('./strategy.ts', import.meta.url) },
  options: arpOptionsSchema,
  errors: arpErrors,
});
