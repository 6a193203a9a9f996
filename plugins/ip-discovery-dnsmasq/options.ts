/** ip-discovery-dnsmasq's options, as a host config gives them (`plugins: [{ use: ip-discovery-dnsmasq, options: … }]`). */
import { isIPv4 } from 'node:net';
import { z } from '../../core/plugin-api.ts';

/** Where managed mode keeps the lease file when `leaseFile` is not given. */
export const MANAGED_LEASE_DIR = '/var/lib/cloudlet/dnsmasq';

const absolutePath = z
  .string()
  .min(2)
  .max(255)
  .regex(/^\/[^\0\n]*[^/\0\n]$/, 'an absolute file path, e.g. /var/lib/misc/dnsmasq.leases');

const interfaceName = z
  .string()
  .min(1)
  .max(15, 'at most 15 characters (the kernel limit for interface names)')
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'a network interface name: letters, digits, "_", ".", "-", at most 15 characters');

const ipv4 = z.ipv4({ error: 'an IPv4 address such as 10.77.0.10' });

const LEASE_TIME_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };
/** Ten years, as for leaseTimeSeconds: well inside the 32 bits dnsmasq keeps a lease time in. */
const MAX_LEASE_SECONDS = 10 * 365 * 86_400;
const LEASE_TIME = /^([1-9][0-9]{0,8})([smhdw]?)$/;

/** dnsmasq's lease-time syntax: seconds, or a number with s/m/h/d/w, or `infinite`. Null for `infinite`. */
export function leaseTimeToSeconds(leaseTime: string): number | null {
  if (leaseTime === 'infinite') return null;
  const match = LEASE_TIME.exec(leaseTime);
  if (!match) throw new Error(`not a dnsmasq lease time: ${JSON.stringify(leaseTime)}`);
  return Number(match[1]) * (LEASE_TIME_UNITS[match[2] || 's'] ?? 1);
}

const leaseTime = z
  .string()
  .regex(/^(?:infinite|[1-9][0-9]{0,8}[smhdw]?)$/, 'a dnsmasq lease time: seconds or a number with s, m, h, d or w (e.g. 12h), or "infinite"')
  // zod runs this check even when the format check failed: only judge well-formed values here.
  .refine((value) => !LEASE_TIME.test(value) || (leaseTimeToSeconds(value) ?? Infinity) >= 120, 'at least 2m: dnsmasq would raise a shorter lease time to 2 minutes')
  // dnsmasq keeps a lease time in 32 bits: 1193047h came out as 31m44s, and lease ages were off by decades.
  .refine((value) => !LEASE_TIME.test(value) || (leaseTimeToSeconds(value) ?? 0) <= MAX_LEASE_SECONDS, 'at most 3650d (10 years): use "infinite" for longer; dnsmasq cuts larger values to 32 bits');

/**
 * Flags an operator may add in managed mode. Only DHCP tuning: nothing that runs programs (--dhcp-script),
 * reads other files (--conf-file, --dhcp-hostsfile, --addn-hosts), changes user, or moves dnsmasq off the
 * bridge (--interface, --listen-address, --port), which the plugin sets itself.
 */
const SAFE_FLAG =
  /^--(?:log-dhcp|quiet-dhcp|quiet-dhcp6|quiet-ra|dhcp-rapid-commit|dhcp-sequential-ip|dhcp-broadcast|enable-ra|(?:dhcp-option|dhcp-host|dhcp-range|dhcp-lease-max|ra-param|domain)=[^\s\0]+)$/;

const extraFlag = z
  .string()
  .max(200)
  .regex(
    SAFE_FLAG,
    'one of --log-dhcp, --quiet-dhcp, --quiet-dhcp6, --quiet-ra, --dhcp-rapid-commit, --dhcp-sequential-ip, --dhcp-broadcast, --enable-ra, or --dhcp-option=, --dhcp-host=, --dhcp-range=, --dhcp-lease-max=, --ra-param=, --domain= with a value without spaces',
  );

function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((sum, octet) => sum * 256 + Number(octet), 0);
}

export const managedSchema = z
  .object({
    /** The bridge the VMs' taps are on; dnsmasq serves DHCP on it and nowhere else. It needs an IPv4 address in the range's subnet. */
    bridge: interfaceName,
    rangeStart: ipv4,
    rangeEnd: ipv4,
    leaseTime: leaseTime.default('1h'),
    dnsmasqBinary: z.string().min(1).max(200).regex(/^[^\s\0]+$/, 'a program name or path without spaces').default('dnsmasq'),
    extraFlags: z.array(extraFlag).max(32).default([]),
  })
  .strict()
  // Runs even when an address failed its own check; only then is the order worth a message.
  .refine((managed) => !isIPv4(managed.rangeStart) || !isIPv4(managed.rangeEnd) || ipv4ToNumber(managed.rangeStart) <= ipv4ToNumber(managed.rangeEnd), {
    message: 'rangeEnd must not be below rangeStart',
    path: ['rangeEnd'],
  });

export const dnsmasqOptionsSchema = z
  .object({
    /** dnsmasq's lease file (its --dhcp-leasefile). Required unless `managed`; then it defaults to /var/lib/cloudlet/dnsmasq/<bridge>.leases. */
    leaseFile: absolutePath.optional(),
    /** Run dnsmasq on the VM bridge from this agent, for hosts that have no DHCP server. */
    managed: managedSchema.optional(),
    /** The lease time dnsmasq hands out, to tell how old a lease is (`ageMs`). Managed mode knows it from `leaseTime`. */
    leaseTimeSeconds: z.number().int().min(1).max(MAX_LEASE_SECONDS).optional(),
  })
  .strict()
  .refine((options) => options.leaseFile !== undefined || options.managed !== undefined, {
    message: `required unless "managed" is set (managed mode defaults it to ${MANAGED_LEASE_DIR}/<bridge>.leases)`,
    path: ['leaseFile'],
  })
  .transform((options) => ({ ...options, leaseFile: options.leaseFile ?? `${MANAGED_LEASE_DIR}/${options.managed?.bridge}.leases` }));

export type DnsmasqOptions = z.output<typeof dnsmasqOptionsSchema>;
export type ManagedOptions = z.output<typeof managedSchema>;

/** The lease time in seconds when the plugin knows it (configured, or managed mode's own), else null. */
export function knownLeaseSeconds(options: Pick<DnsmasqOptions, 'leaseTimeSeconds' | 'managed'>): number | null {
  if (options.leaseTimeSeconds !== undefined) return options.leaseTimeSeconds;
  return options.managed ? leaseTimeToSeconds(options.managed.leaseTime) : null;
}
