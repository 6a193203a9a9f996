/**
 * The addresses in a `guest-network-get-interfaces` answer. The guest writes that answer, so it is checked
 * like any untrusted input: an entry that is not what the agent documents is skipped with a reason (and the
 * good entries beside it kept), never passed on into replies or the operator's terminal.
 */
import { isIP } from 'node:net';
import { normalizeMac, scopeOf, type DiscoveredAddress } from '../../core/capabilities/ip-discovery.ts';

export interface GuestAddresses {
  addresses: DiscoveredAddress[];
  /** Why entries of the VM's own interface were left out (other interfaces are not looked at). */
  skipped: string[];
}

/** Longer than any interface name a guest OS gives (Linux 15 bytes, Windows friendly names ~256 characters). */
const MAX_NAME_LENGTH = 256;
// C0 controls, DEL and C1 controls: nothing a name is printed with.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const FAMILY_BITS = { ipv4: 32, ipv6: 128 } as const;

export function addressesFromGuest(answer: unknown, mac: string): GuestAddresses {
  const skipped: string[] = [];
  if (!Array.isArray(answer)) return { addresses: [], skipped: [`the answer is not a list of interfaces but ${kindOf(answer)}`] };
  const wanted = normalizeMac(mac);
  const addresses: DiscoveredAddress[] = [];
  answer.forEach((nic: unknown, index) => {
    if (!isRecord(nic)) return skipped.push(`interface #${index} is ${kindOf(nic)}, not an object`);
    const hardware = nic['hardware-address'];
    if (typeof hardware !== 'string' || normalizeMac(hardware) !== wanted) return;
    const name = printableName(nic.name);
    if (name === undefined) skipped.push(`interface #${index}'s name (${kindOf(nic.name)}) is not a printable string of at most ${MAX_NAME_LENGTH} characters; left out`);
    const list = nic['ip-addresses'];
    if (list === undefined) return;
    if (!Array.isArray(list)) return skipped.push(`interface #${index}'s "ip-addresses" is ${kindOf(list)}, not a list`);
    list.forEach((entry: unknown, at) => {
      const where = `interface #${index} address #${at}`;
      const reason = addressProblem(entry);
      if (reason) return skipped.push(`${where} ${reason}`);
      const { 'ip-address': address, 'ip-address-type': family, prefix } = entry as { 'ip-address': string; 'ip-address-type': 'ipv4' | 'ipv6'; prefix: unknown };
      const validPrefix = Number.isInteger(prefix) && (prefix as number) >= 0 && (prefix as number) <= FAMILY_BITS[family];
      addresses.push({
        address,
        family,
        scope: scopeOf(address, family),
        source: 'ip-discovery-guest-agent',
        ageMs: 0,
        detail: { ...(name === undefined ? {} : { interface: name }), ...(validPrefix ? { prefix } : {}) },
      });
    });
  });
  return { addresses, skipped };
}

function addressProblem(entry: unknown): string | undefined {
  if (!isRecord(entry)) return `is ${kindOf(entry)}, not an object`;
  const family = entry['ip-address-type'];
  if (family !== 'ipv4' && family !== 'ipv6') return `has "ip-address-type" ${kindOf(family)}; allowed: "ipv4", "ipv6"`;
  const address = entry['ip-address'];
  if (typeof address !== 'string' || address.length > 64 || isIP(address) !== (family === 'ipv4' ? 4 : 6)) {
    return `has "ip-address" ${kindOf(address)}, which is not an ${family === 'ipv4' ? 'IPv4' : 'IPv6'} address`;
  }
  return undefined;
}

function printableName(name: unknown): string | undefined {
  return typeof name === 'string' && name.length <= MAX_NAME_LENGTH && !CONTROL.test(name) ? name : undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** What a value is, for a message: never the value itself, which the guest chose. */
function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'string') return `a string of ${value.length} characters`;
  return typeof value === 'object' || typeof value === 'undefined' ? `an ${typeof value}` : `a ${typeof value}`;
}
