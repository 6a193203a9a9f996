/**
 * Asks qemu-guest-agent inside the guest (the method the seed system used). Works without any host-side
 * DHCP or neighbour state, but only for images that run the agent.
 */
import { scopeOf, normalizeMac, type DiscoveredAddress, type IpDiscoveryStrategy } from '../../core/capabilities/ip-discovery.ts';
import { guestAgentCall, type GuestInterface } from './guest-agent-client.ts';

interface Options {
  timeoutMs: number;
}

/** A passive caller (list-vms) asks every VM at once: a guest without an agent must not hold the list long. */
const PASSIVE_TIMEOUT_MS = 500;

const strategy: IpDiscoveryStrategy<Options> = {
  async discover(vm, { options, log, passive, signal }) {
    if (!vm.guestAgentSocket) return [];
    let interfaces: GuestInterface[];
    try {
      interfaces = await guestAgentCall<GuestInterface[]>(vm.guestAgentSocket, 'guest-network-get-interfaces', undefined, passive ? Math.min(options.timeoutMs, PASSIVE_TIMEOUT_MS) : options.timeoutMs, signal);
    } catch (error) {
      // No agent in the image, or not started yet: nothing known, not a failure.
      log.debug({ vm: vm.vm, reason: (error as Error).message }, 'guest agent did not answer');
      return [];
    }
    const mac = normalizeMac(vm.mac);
    const found: DiscoveredAddress[] = [];
    for (const nic of interfaces) {
      if (normalizeMac(nic['hardware-address'] ?? '') !== mac) continue;
      for (const ip of nic['ip-addresses'] ?? []) {
        const family = ip['ip-address-type'];
        found.push({ address: ip['ip-address'], family, scope: scopeOf(ip['ip-address'], family), source: 'ip-discovery-guest-agent', ageMs: 0, detail: { interface: nic.name, prefix: ip.prefix } });
      }
    }
    return found;
  },
};

export default strategy;
