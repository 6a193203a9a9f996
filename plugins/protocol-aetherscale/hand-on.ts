/**
 * A host that cannot take a create-vm (no room, or not the image) puts it back on the shared queue, naming
 * itself in a header, so another host can take it; once every consumer of the queue refused, the last one
 * answers. The original had neither capacity limits nor hosts with different images, so it never needed this.
 */
import { unknownImage } from './reasons.ts';

export const HAND_ON_HEADERS = {
  /** Hosts that refused the request (JSON array). */
  refusedBy: 'x-aetherscale-refused-by',
  /** Of those, the ones that refused for lack of room (JSON array): they have the image. */
  full: 'x-aetherscale-full',
  /** How often it was put back (for the logs, and a last bound). */
  hops: 'x-aetherscale-hops',
  /** When the first host refused it (epoch ms, that host's clock). */
  since: 'x-aetherscale-since',
  /** The images of the hosts that did not have the one asked for (JSON array), for the final answer. */
  images: 'x-aetherscale-images',
} as const;

/**
 * How long a refused create-vm goes round while some consumer of the queue has not refused it yet. Such a
 * host may be busy: the broker sends it nothing while its one prefetch slot is taken (a create takes
 * seconds), so the copies come back to the hosts that refused. Counting passes ended that too early
 * (8 passes with two hosts, about 2 s). The price: when full hosts keep getting their own copies back (each
 * pausing at once), the answer can take this long.
 */
export const HAND_ON_PATIENCE_MS = 20_000;
/** A last bound, for a request that goes round much faster than the 250 ms pause would let it. */
const MAX_HOPS = 1_000;

export interface Refusal {
  code: 'NO_CAPACITY' | 'IMAGE_NOT_FOUND';
  /** The answer if no host takes the request. */
  reason: string;
  image?: string;
  available?: string[];
}

export type HandOnDecision =
  | { kind: 'answer'; refusedBy: string[]; reason: string }
  | { kind: 'pass'; refusedBy: string[]; hops: number; images: string[]; full: string[]; since: number; pause: boolean };

export function handOnDecision(headers: Record<string, unknown> | undefined, host: string, consumerCount: number, refusal: Refusal, now = Date.now()): HandOnDecision {
  const previous = parseList(headers?.[HAND_ON_HEADERS.refusedBy]);
  const hops = Number(headers?.[HAND_ON_HEADERS.hops] ?? 0);
  const refusedBy = [...new Set([...previous, host])];
  const full = [...new Set([...parseList(headers?.[HAND_ON_HEADERS.full]), ...(refusal.code === 'NO_CAPACITY' ? [host] : [])])];
  const images = [...new Set([...parseList(headers?.[HAND_ON_HEADERS.images]), ...(refusal.available ?? [])])].sort();
  // Another host's clock: one ahead of ours (or no number) counts from now.
  const given = Number(headers?.[HAND_ON_HEADERS.since]);
  const since = Number.isFinite(given) && given <= now ? given : now;
  const everyone = refusedBy.length >= Math.max(consumerCount, 1);
  if (everyone || now - since > HAND_ON_PATIENCE_MS || !Number.isFinite(hops) || hops + 1 > MAX_HOPS) {
    const others = Math.max(consumerCount, 1) - refusedBy.length;
    const notTaken = everyone ? '' : `; ${others} other host${others === 1 ? '' : 's'} did not take it within ${HAND_ON_PATIENCE_MS / 1000} s (busy with other requests?)`;
    // A host that has the image but no room decides the answer: the image exists.
    const capacity = refusal.code === 'NO_CAPACITY' ? refusal.reason : `${full.join(', ')} ${full.length === 1 ? 'has' : 'have'} the image but no room`;
    const reason =
      full.length > 0 ? `No host has capacity for the VM (refused by ${refusedBy.join(', ')}): ${capacity}${notTaken}` : `${unknownImage(refusal.image ?? '?', images)}${notTaken}`;
    return { kind: 'answer', refusedBy, reason };
  }
  return { kind: 'pass', refusedBy, hops: hops + 1, images, full, since, pause: previous.includes(host) };
}

function parseList(value: unknown): string[] {
  const text = typeof value === 'string' ? value : value instanceof Uint8Array ? new TextDecoder().decode(value) : undefined;
  if (text === undefined) return [];
  try {
    const parsed = JSON.parse(text) as unknown;
    return Array.isArray(parsed) ? parsed.filter((item): item is string => typeof item === 'string').slice(0, 1_000) : [];
  } catch {
    return []; // a header someone else wrote: start counting afresh
  }
}
