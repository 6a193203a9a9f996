/**
 * Asks qemu-guest-agent inside the guest (the method the seed system used). Works without any host-side
 * DHCP or neighbour state, but only for images that run the agent.
 */
import type { IpDiscoveryStrategy } from '../../core/capabilities/ip-discovery.ts';
import { guestAgentCall } from './guest-agent-client.ts';
import { addressesFromGuest } from './guest-interfaces.ts';

interface Options {
  timeoutMs: number;
}

/** A passive caller (list-vms) asks every VM at once: a guest without an agent must not hold the list long. */
const PASSIVE_TIMEOUT_MS = 500;
/** A guest that sends thousands of bad entries gets a log line of bounded size. */
const MAX_REASONS_LOGGED = 20;

const strategy: IpDiscoveryStrategy<Options> = {
  async discover(vm, { options, log, passive, signal }) {
    if (!vm.guestAgentSocket) return [];
    let answer: unknown;
    try {
      answer = await guestAgentCall<unknown>(vm.guestAgentSocket, 'guest-network-get-interfaces', undefined, passive ? Math.min(options.timeoutMs, PASSIVE_TIMEOUT_MS) : options.timeoutMs, signal);
    } catch (error) {
      // No agent in the image, or not started yet: nothing known, not a failure.
      log.debug({ vm: vm.vm, reason: (error as Error).message }, 'guest agent did not answer');
      return [];
    }
    const { addresses, skipped } = addressesFromGuest(answer, vm.mac);
    if (skipped.length > 0) {
      log.warn(
        { vm: vm.vm, skipped: skipped.slice(0, MAX_REASONS_LOGGED) },
        `ip-discovery-guest-agent: the guest agent of ${vm.vm} reported ${skipped.length} entries that are not what qemu-guest-agent sends; left out`,
      );
    }
    return addresses;
  },
};

export default strategy;
