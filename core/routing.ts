/** How a client sends a message: to one host, to any host with capacity, or to every host. */
import { cloudletError } from './errors.ts';
import type { CoreConfig } from './config/schema.ts';

export type ClientRoute = 'direct' | 'any' | 'broadcast';

/**
 * The host that owns a VM, read from the VM id in a payload (`{"vm": "node1.kqzvbxwe"}`): VM ids start with
 * their host's id, so commands for a VM need no lookup. See docs/PROTOCOL.md.
 */
export function ownerFromPayload(payload: unknown): string | undefined {
  const vm = (payload as { vm?: unknown } | null | undefined)?.vm;
  if (typeof vm !== 'string') return undefined;
  const match = /^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.[a-z]{8}$/.exec(vm);
  return match?.[1];
}

export function chooseRoute(config: CoreConfig, type: string, target: string | undefined): ClientRoute {
  if (target !== undefined) return 'direct';
  // One agent behind a local socket: every message is for it.
  if (config.transport.kind === 'local') return 'direct';
  if (config.routing.broadcast.includes(type)) return 'broadcast';
  if (config.routing.any.includes(type)) return 'any';
  throw cloudletError(
    'USAGE',
    `"${type}" goes to one host: name it with --host (types sent to every host: ${config.routing.broadcast.join(', ') || 'none'}; to any host: ${config.routing.any.join(', ') || 'none'}; see routing in the config)`,
  );
}
