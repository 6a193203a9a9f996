/** The folders a host config makes the agent write to, as the systemd unit has to allow them. */
import { dirname } from 'node:path';
import type { HostConfig } from '../../config/host-config.ts';
import { defaultStateDir } from '../../config/schema.ts';

/** Writable already through the unit's StateDirectory= and RuntimeDirectory=. */
const COVERED = ['/var/lib/cloudlet', '/run/cloudlet'];
/** Hidden from the service by ProtectHome= and PrivateTmp=. */
const HIDDEN = ['/home', '/root', '/run/user', '/tmp', '/var/tmp'];

const under = (path: string, roots: string[]) => roots.some((root) => path === root || path.startsWith(`${root}/`));

/** Whether the unit's ProtectHome=/PrivateTmp= hide `path` from the service. */
export const hiddenFromService = (path: string): boolean => under(path, HIDDEN);

export function writablePaths(config: HostConfig): { readWrite: string[]; hidden: string[] } {
  const wanted: string[] = [config.core.state.dir ?? defaultStateDir()];
  if (config.core.transport.kind === 'local' && config.core.transport.socket) wanted.push(dirname(config.core.transport.socket));
  for (const plugin of config.plugins) {
    const options = plugin.options as Record<string, unknown> | undefined;
    if (plugin.plugin.name === 'qemu-backend' && typeof options?.stateDir === 'string') wanted.push(options.stateDir);
    if (plugin.plugin.name === 'ip-discovery-dnsmasq' && options?.managed && typeof options.leaseFile === 'string') wanted.push(dirname(options.leaseFile));
  }
  const unique = [...new Set(wanted)];
  return {
    readWrite: unique.filter((path) => !under(path, COVERED) && !under(path, HIDDEN)),
    hidden: unique.filter((path) => under(path, HIDDEN)),
  };
}
