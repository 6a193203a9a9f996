/**
 * A host that cannot take a create-vm (no room, or not the image) puts it back on the shared queue, naming
 * itself in a header, so another host can take it; once every consumer of the queue refused, the last one
 * answers. The original had neither capacity limits nor hosts with different images, so it never needed this.
 */
import { unknownImage } from './reasons.ts';

export const HAND_ON_HEADERS = {
  /** Hosts that refused the request (JSON array). */
  refusedBy: 'x-aetherscale-refused-by',
  /** How often it was put back; bounds the round trips when a host with room is busy elsewhere. */
  hops: 'x-aetherscale-hops',
  /** The images of the hosts that did not have the one asked for (JSON array), for the final answer. */
  images: 'x-aetherscale-images',
} as const;

export interface Refusal {
  code: 'NO_CAPACITY' | 'IMAGE_NOT_FOUND';
  /** The answer if no host takes the request. */
  reason: string;
  image?: string;
  available?: string[];
}

export type HandOnDecision =
  | { kind: 'answer'; refusedBy: string[]; reason: string }
  | { kind: 'pass'; refusedBy: string[]; hops: number; images: string[]; pause: boolean };

export function handOnDecision(headers: Record<string, unknown> | undefined, host: string, consumerCount: number, refusal: Refusal): HandOnDecision {
  const previous = parseList(headers?.[HAND_ON_HEADERS.refusedBy]);
  const hops = Number(headers?.[HAND_ON_HEADERS.hops] ?? 0);
  const refusedBy = [...new Set([...previous, host])];
  const images = [...new Set([...parseList(headers?.[HAND_ON_HEADERS.images]), ...(refusal.available ?? [])])].sort();
  const maxHops = 3 * Math.max(consumerCount, 1) + 2;
  if (refusedBy.length >= consumerCount || !Number.isFinite(hops) || hops + 1 > maxHops) {
    const reason =
      refusal.code === 'IMAGE_NOT_FOUND'
        ? unknownImage(refusal.image ?? '?', images)
        : `No host has capacity for the VM (refused by ${refusedBy.join(', ')}): ${refusal.reason}`;
    return { kind: 'answer', refusedBy, reason };
  }
  return { kind: 'pass', refusedBy, hops: hops + 1, images, pause: previous.includes(host) };
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
