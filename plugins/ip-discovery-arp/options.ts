/** ip-discovery-arp's options, as a host config gives them (`plugins: [{ use: ip-discovery-arp, options: … }]`). */
import { isIPv4 } from 'node:net';
import { z } from '../../core/plugin-api.ts';

export const interfaceName = z
  .string()
  .min(1)
  .max(15)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'a network interface name: letters, digits, "_", ".", "-", at most 15 characters');

const ipv4Cidr = z
  .string()
  .max(18)
  .refine((value) => {
    const [address = '', prefix = '', ...rest] = value.split('/');
    return rest.length === 0 && isIPv4(address) && /^\d{1,2}$/.test(prefix) && Number(prefix) <= 32;
  }, 'an IPv4 range like 10.77.0.0/24');

export const MAX_PROBE_ADDRESSES = 4096;

export const probeOptionsSchema = z
  .object({
    /** Sweep the bridge's IPv4 subnet when the VM's MAC has no IPv4 entry, so the kernel resolves it by ARP. */
    enabled: z.boolean().default(false),
    /** Datagrams per sweep at most; a larger subnet is cut to its first addresses (narrow it with `cidr`). */
    maxAddresses: z.number().int().min(1).max(MAX_PROBE_ADDRESSES).default(256),
    /**
     * Datagrams per second of one probe sweep. Each get-vm-ip that probes sweeps on its own (a waiting one
     * at most every 10 s): several at once (VMs created together) add up, up to get-vm-ip's threads × tasks
     * per thread sweeps.
     */
    ratePerSecond: z.number().int().min(1).max(5_000).default(200),
    /** Sweep only this range; it must lie inside one of the bridge's IPv4 subnets. Default: the whole subnet. */
    cidr: ipv4Cidr.optional(),
    /** After the sweep, how long to wait for the VM's entry to appear before reading the table again. */
    settleMs: z.number().int().min(0).max(10_000).default(1_000),
  })
  .strict();

export const arpOptionsSchema = z
  .object({
    /** The VM bridge whose neighbour table is read. Wins over the bridge the caller names for the VM. */
    bridge: interfaceName.optional(),
    ipBinary: z.string().min(1).max(200).default('ip'),
    probe: probeOptionsSchema.default({ enabled: false, maxAddresses: 256, ratePerSecond: 200, settleMs: 1_000 }),
    /** Report STALE entries (marked in `detail.state`, after the fresh ones); false reports only fresh ones. */
    includeStale: z.boolean().default(true),
  })
  .strict();

export type ArpOptions = z.output<typeof arpOptionsSchema>;
export type ProbeOptions = z.output<typeof probeOptionsSchema>;
