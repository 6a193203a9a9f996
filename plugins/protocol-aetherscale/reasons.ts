/** cloudlet's coded errors as the `reason` texts aetherscale clients know. */
import type { DispatchReply } from '../../core/plugin-api.ts';

type DispatchError = Extract<DispatchReply, { ok: false }>['error'];

export function reasonFor(error: DispatchError): string {
  const details = (error.details ?? {}) as { image?: unknown };
  switch (error.code) {
    case 'IMAGE_NOT_FOUND':
      return unknownImage(typeof details.image === 'string' ? details.image : '?', availableImages(error.details));
    case 'VM_NOT_FOUND':
      return 'VM does not exist';
    default:
      // The code keeps cloudlet's catalogue one search away (docs/ERRORS.md).
      return `${error.message} (${error.code})`;
  }
}

/** The original said `Image "x" does not exist`; the list of what there is comes from cloudlet. */
export function unknownImage(image: string, available: readonly string[]): string {
  return `Image "${image}" does not exist; available images: ${available.join(', ') || 'none'}`;
}

export function availableImages(details: unknown): string[] {
  const available = (details as { available?: unknown } | undefined)?.available;
  return Array.isArray(available) ? available.filter((name): name is string => typeof name === 'string') : [];
}

export function isShuttingDown(reply: DispatchReply): boolean {
  return !reply.ok && reply.error.code === 'SHUTTING_DOWN';
}
