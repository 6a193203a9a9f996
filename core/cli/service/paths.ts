/** The folders a host config makes the agent write to, as the systemd unit has to allow them. */
import { realpathSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import type { HostConfig } from '../../config/host-config.ts';
import { defaultStateDir } from '../../config/schema.ts';

/** Writable already through the unit's StateDirectory= and RuntimeDirectory=. */
const COVERED = ['/var/lib/cloudlet', '/run/cloudlet'];
/** Hidden from the service by ProtectHome= and PrivateTmp=. */
const HIDDEN = ['/home', '/root', '/run/user', '/tmp', '/var/tmp'];

const under = (path: string, roots: string[]) => roots.some((root) => path === root || path.startsWith(`${root}/`));

/** Whether the unit's ProtectHome=/PrivateTmp= hide `path` from the service. */
export const hiddenFromService = (path: string): boolean => under(path, HIDDEN);

export interface ServicePaths {
  /** Folders to list as ReadWritePaths (absolute). */
  readWrite: string[];
  /** Folders and files the agent needs that the unit hides (under /home, /root, /tmp…). */
  hidden: string[];
  /** Paths given relative in the config: the service runs in /, so they mean /<path> there. */
  relative: string[];
  /** For each readWrite folder, the setting that named it (`state.dir`, `qemu-backend option stateDir`…). */
  settings: ReadonlyMap<string, string>;
}

/**
 * What the agent writes to (state, sockets, VM folders, a managed dnsmasq's leases) and reads (images, a
 * lease file, key files), as the unit has to allow them.
 */
export function writablePaths(config: HostConfig): ServicePaths {
  // [setting, path]: the setting names the folder when install-service has to refuse it.
  const named: [string, string][] = [config.core.state.dir ? ['state.dir', config.core.state.dir] : ['the default state.dir ($XDG_STATE_HOME or $HOME)', defaultStateDir()]];
  const read: string[] = [];
  if (config.core.transport.kind === 'local' && config.core.transport.socket) named.push(['transport.socket', dirname(config.core.transport.socket)]);
  const security = config.core.security as { hostKeyFile?: string; clientKeyFile?: string } | undefined;
  for (const key of [security?.hostKeyFile, security?.clientKeyFile]) if (key) read.push(key);
  for (const plugin of config.plugins) {
    const options = plugin.options as Record<string, unknown> | undefined;
    if (plugin.plugin.name === 'qemu-backend' && typeof options?.stateDir === 'string') named.push(['qemu-backend option stateDir', options.stateDir]);
    if (plugin.plugin.name === 'qemu-backend' && typeof options?.imagesDir === 'string') read.push(options.imagesDir);
    if (plugin.plugin.name === 'ip-discovery-dnsmasq' && typeof options?.leaseFile === 'string') {
      if (options.managed) named.push(['ip-discovery-dnsmasq option leaseFile', dirname(options.leaseFile)]);
      else read.push(options.leaseFile);
    }
  }
  const wanted = named.map(([, path]) => path);
  const relative = [...new Set([...wanted, ...read].filter((path) => !isAbsolute(path)))];
  // The service runs in /. The agent opens a path as written, and ProtectHome=/PrivateTmp= hide it as
  // written or wherever a link leads (a link in /tmp to /srv is hidden; /home may itself be a link), so both
  // count for hiding. What the unit must allow is the real folder (/var/run/cloudlet is the /run/cloudlet the
  // unit's RuntimeDirectory= makes).
  const lexical = (path: string) => resolve('/', path);
  const isHidden = (path: string) => under(lexical(path), HIDDEN) || under(throughLinks(lexical(path)), HIDDEN);
  const settings = new Map<string, string>();
  for (const [setting, path] of named) {
    const real = throughLinks(lexical(path));
    if (!isHidden(path) && !settings.has(real)) settings.set(real, setting);
  }
  return {
    readWrite: [...settings.keys()].filter((path) => !under(path, COVERED) && !under(path, HIDDEN)),
    hidden: [...new Set([...wanted, ...read].filter(isHidden).map(lexical))],
    relative,
    settings,
  };
}

/** `path` with its longest existing prefix resolved through symbolic links (the rest may not exist yet). */
function throughLinks(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    const parent = dirname(path);
    return parent === path ? path : join(throughLinks(parent), basename(path));
  }
}

/** Whether `path` is under /run, a tmpfs emptied at every boot. */
export const underRun = (path: string): boolean => under(path, ['/run']);
