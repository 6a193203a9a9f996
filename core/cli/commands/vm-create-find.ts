/**
 * `vm create --request-id ID` without `--host`, on RabbitMQ: before the create goes to any host, every host is
 * asked what that request left there (qemu-backend's `find-create`). A repeat then goes to the host that has
 * its VM, its create at work, its leftover or its deletion, and is answered there, instead of reaching
 * another host that would make a second VM. When no host has anything of it, it goes to any host as before;
 * but when a host that could have run it cannot say (down, silent, an error, an agent older than find-create),
 * the create is not sent: the VM may be there (REQUEST_UNRESOLVED, naming them).
 */
import type { GatherResult } from '../../transports/transport.ts';
import { cloudletError } from '../../errors.ts';
import { hostOutcomes, type CliClient } from '../client.ts';

/** What find-create answered on one host (plugins/qemu-backend/handlers/find-create.ts). */
export interface FoundCreate {
  host: string;
  found: 'vm' | 'creating' | 'leftover' | 'deleted' | null;
  vm?: string;
  deletedAt?: string;
}

/** Where to go when hosts disagree (an earlier repeat without a target may have left a VM on each). */
const FIRST_CHOICE: FoundCreate['found'][] = ['vm', 'creating', 'leftover', 'deleted'];

/** How long the hosts get to answer when the create has no deadline of its own. */
export const FIND_TIMEOUT_MS = 15_000;

export async function findEarlierCreate(client: CliClient, requestId: string, deadline: number | undefined): Promise<{ host?: string; found: FoundCreate[] }> {
  const gathered = await client.gather('find-create', { request: requestId }, { deadline: deadline ?? Date.now() + FIND_TIMEOUT_MS });
  return hostOfEarlierCreate(gathered, requestId);
}

/** The decision, from what the hosts answered (no I/O: unit-tested). `found`: every host that has something. */
export function hostOfEarlierCreate(gathered: GatherResult, requestId: string): { host?: string; found: FoundCreate[] } {
  const found: FoundCreate[] = [];
  const unsure: string[] = [];
  for (const outcome of hostOutcomes<FoundCreate>(gathered)) {
    if (outcome.ok && outcome.result) {
      if (outcome.result.found !== null) found.push({ ...outcome.result, host: outcome.host });
    } else if (outcome.error?.code === 'UNKNOWN_TYPE') {
      // No qemu-backend there (it makes no VMs), unless it handles create-vm: an agent older than find-create.
      const known = (outcome.error.details as { known?: unknown } | undefined)?.known;
      if (Array.isArray(known) && known.includes('create-vm')) unsure.push(`${outcome.host} (its agent is older than find-create)`);
    } else unsure.push(`${outcome.host} (${outcome.error?.code ?? 'no answer'}: ${outcome.error?.message ?? ''})`);
  }
  for (const host of gathered.missing) unsure.push(`${host} (did not answer)`);
  for (const { host } of gathered.down ?? []) unsure.push(`${host} (down)`);
  if (found.length > 0) {
    const best = [...found].sort((a, b) => FIRST_CHOICE.indexOf(a.found) - FIRST_CHOICE.indexOf(b.found))[0]!;
    return { host: best.host, found };
  }
  if (unsure.length === 0) return { found };
  throw cloudletError(
    'REQUEST_UNRESOLVED',
    `request ${requestId} left nothing on the hosts that answered, but ${unsure.join(', ')} could not say whether it ran there: sending it to any host could make a second VM`,
    { request: requestId, hosts: unsure, hint: 'wait until those hosts answer and run it again, or give --host to send it to one host regardless' },
  );
}

/** The note a repeat sent to a found host gets, when the request left something on more than one. */
export function foundElsewhere(found: FoundCreate[], chosen: string): string | undefined {
  const others = found.filter((entry) => entry.host !== chosen);
  if (others.length === 0) return undefined;
  return `warning: request left something on other hosts too: ${others.map((entry) => `${entry.host} (${entry.found}${entry.vm ? ` ${entry.vm}` : ''})`).join(', ')}`;
}
