/**
 * `vm create --request-id ID` without `--host`, on RabbitMQ: before the create goes to any host, every host is
 * asked what that request left there (qemu-backend's `find-create`). A repeat then goes to the host that has
 * its VM, its create at work, its deletion or its leftover, and is answered there, instead of reaching
 * another host that would make a second VM. When no host has anything of it, it goes to any host as before;
 * but when a host that could have run it cannot say (down, silent, an error, an agent older than
 * find-create, one that takes any-host requests but no broadcasts), the create is not sent: the VM may be
 * there (REQUEST_UNRESOLVED, naming them).
 */
import { cloudletError } from '../../errors.ts';
import type { GatherResult, KnownHost } from '../../transports/transport.ts';
import { hostOutcomes, whyMissing, type CliClient } from '../client.ts';

/** What find-create answered on one host (plugins/qemu-backend/handlers/find-create.ts). */
export interface FoundCreate {
  host: string;
  /** `accepted`: a create of it waits on that host for its turn (no VM id yet); agents from core API 1.11. */
  found: 'vm' | 'creating' | 'accepted' | 'leftover' | 'deleted' | null;
  vm?: string;
  deletedAt?: string;
}

/**
 * Where to go when hosts disagree (an earlier repeat without a target may have left something on each). A
 * deletion before a leftover: the request's VM was made and deleted there, while a leftover is only a run
 * that died, which a repeat on that host removes and starts over.
 */
const FIRST_CHOICE: FoundCreate['found'][] = ['vm', 'creating', 'accepted', 'deleted', 'leftover'];

/**
 * What settles it even while a host cannot say: the request's VM is there, or being made there. Not a
 * create waiting there (`accepted`): one that finds its host full when it starts is handed on, maybe to the
 * host that cannot say.
 */
const SETTLES: FoundCreate['found'][] = ['vm', 'creating'];

const PHRASE: Record<NonNullable<FoundCreate['found']>, string> = {
  vm: 'a VM',
  creating: 'a create at work',
  accepted: 'a create waiting for its turn',
  deleted: 'a deleted VM',
  leftover: 'a leftover',
};

/** How long the hosts get to answer, at most (less when the create's own deadline is nearer). */
export const FIND_TIMEOUT_MS = 15_000;

export async function findEarlierCreate(client: CliClient, requestId: string, deadline: number | undefined): Promise<{ host?: string; found: FoundCreate[] }> {
  const findDeadline = Math.min(deadline ?? Infinity, Date.now() + FIND_TIMEOUT_MS);
  const gathered = await client.gather('find-create', { request: requestId }, { deadline: findDeadline });
  const known = (await client.transport.hosts?.(0)) ?? [];
  return hostOfEarlierCreate(gathered, requestId, known);
}

/**
 * The decision, from what the hosts answered and who is known (no I/O: unit-tested). `found`: every host that
 * has something of the request.
 */
export function hostOfEarlierCreate(gathered: GatherResult, requestId: string, known: KnownHost[] = []): { host?: string; found: FoundCreate[] } {
  const found: FoundCreate[] = [];
  const unsure: string[] = [];
  const answered = new Set<string>();
  for (const outcome of hostOutcomes<FoundCreate>(gathered)) {
    answered.add(outcome.host);
    if (outcome.ok && outcome.result) {
      if (outcome.result.found !== null) found.push({ ...outcome.result, host: outcome.host });
    } else if (outcome.error?.code === 'UNKNOWN_TYPE') {
      // No qemu-backend there (it makes no VMs), unless it handles create-vm: an agent older than find-create.
      const types = (outcome.error.details as { known?: unknown } | undefined)?.known;
      if (Array.isArray(types) && types.includes('create-vm')) unsure.push(`${outcome.host} (its agent is older than find-create)`);
    } else unsure.push(`${outcome.host} (${outcome.error?.code ?? 'no answer'}: ${outcome.error?.message ?? ''})`);
  }
  for (const host of gathered.missing) unsure.push(`${host} (${whyMissing(gathered, host)})`);
  const down = (gathered.down ?? []).map((entry) => entry.host);
  for (const host of down) unsure.push(`${host} (down)`);
  // A live host that takes any-host requests (or took them, and drains before it stops) but was not asked:
  // the gather asks only hosts that take broadcasts now.
  const counted = new Set([...answered, ...gathered.missing, ...down]);
  for (const entry of known) {
    if (entry.state === 'up' && !counted.has(entry.host) && [...entry.routes, ...entry.tookRoutes].includes('any')) {
      unsure.push(`${entry.host} (takes any-host requests, but was not asked: it takes no broadcasts now)`);
    }
  }
  // With a host unsure, only a VM or a create at work settles it: a deletion, a leftover or a create waiting
  // elsewhere does not say the request did not run (again), and make a VM, on the host that cannot answer.
  const settling = unsure.length === 0 ? found : found.filter((entry) => SETTLES.includes(entry.found));
  if (settling.length > 0) {
    const best = [...settling].sort((a, b) => FIRST_CHOICE.indexOf(a.found) - FIRST_CHOICE.indexOf(b.found))[0]!;
    return { host: best.host, found };
  }
  if (unsure.length === 0) return { found };
  const what = found.length === 0 ? 'left nothing on the hosts that answered' : `left only ${found.map((entry) => `${(entry.found && PHRASE[entry.found]) ?? `a ${entry.found}`} on ${entry.host}`).join(' and ')}`;
  const forget = down.length > 0 ? `; a host that is gone for good is taken out with "cloudlet hosts forget ${down[0]}"` : '';
  throw cloudletError(
    'REQUEST_UNRESOLVED',
    `request ${requestId} ${what}, but ${unsure.join(', ')} could not say whether it ran there: sending it to any host could make a second VM`,
    { request: requestId, hosts: unsure, hint: `wait until those hosts answer and run it again, or give --host to send it to one host regardless${forget}` },
  );
}

/** The note a repeat sent to a found host gets, when the request left something on more than one. */
export function foundElsewhere(found: FoundCreate[], chosen: string): string | undefined {
  const others = found.filter((entry) => entry.host !== chosen);
  if (others.length === 0) return undefined;
  return `warning: request left something on other hosts too: ${others.map((entry) => `${entry.host} (${entry.found}${entry.vm ? ` ${entry.vm}` : ''})`).join(', ')}`;
}
