/**
 * The `ip-discovery` capability: how a plugin tells a VM's addresses. A provider plugin declares
 * `provides: ['ip-discovery']` and `capabilityModules: { 'ip-discovery': new URL('./strategy.ts', import.meta.url) }`;
 * that module's default export is an `IpDiscoveryStrategy`. The VM backend (qemu-backend's `get-vm-ip`,
 * `get-vm`, `list-vms`) asks the host's providers in config order, first hit or merged.
 * Strategy modules run in worker threads: stateless, web-standard APIs and `node:` specifiers only.
 */
import type { PluginLogger } from '../plugin-api.ts';

/** What a strategy knows about the VM it is asked about. */
export interface VmNetworkIdentity {
  vm: string;
  /** Lowercase, colon-separated. */
  mac: string;
  /** The bridge the VM's tap is on, when bridged. */
  bridge?: string;
  /** The VM's qemu-guest-agent socket, when it has one. */
  guestAgentSocket?: string;
}

export type AddressFamily = 'ipv4' | 'ipv6';
export type AddressScope = 'global' | 'link-local' | 'loopback';

export interface DiscoveredAddress {
  address: string;
  family: AddressFamily;
  scope: AddressScope;
  /** The strategy (plugin name) that found it. */
  source: string;
  /** How old the evidence is (lease written, neighbour entry updated), when the source says; else null. */
  ageMs: number | null;
  /** Source-specific detail, e.g. the neighbour state (REACHABLE, STALE) or the lease expiry. */
  detail?: Record<string, unknown>;
}

export interface IpDiscoveryContext<Options = unknown> {
  /** The providing plugin's validated options. */
  options: Options;
  /**
   * Aborts when the caller stops listening: its wait is over (get-vm-ip's `timeoutMs`) or the message was
   * cancelled. Stop then; an answer that comes later is ignored either way.
   */
  signal: AbortSignal;
  log: PluginLogger;
  /**
   * Answer from what is known now and quickly — no active probing, short waits. The caller asks about many
   * VMs at once (list-vms), or re-asks within a wait: get-vm-ip's wait asks actively first and then at most
   * every 10 s, passively in between, so a strategy that probes probes at most that often per wait. Absent
   * means false. Added in core API 1.6.
   */
  passive?: boolean;
  /**
   * A memo shared by the asks of one list (list-vms asks about every VM of the host at once). A strategy
   * whose source is per host or per bridge rather than per VM — a neighbour table, a lease file — reads it
   * through `readOnce` so that one list reads it once, not once per VM. Absent for one VM's ask, which
   * then reads its source as it is now. The caller gives every ask of a list the same signal and never
   * shares a memo across a wait (a memo is a snapshot). Added in core API 1.7.
   */
  shared?: Map<string, Promise<unknown>>;
}

/**
 * `read()` — or, when the context carries a list's memo (`shared`), the promise the first ask of that list
 * made for `key`. Key by plugin and source, e.g. `ip-discovery-arp:neigh:br0`. A failed read fails the
 * asks waiting on it, as it would have failed each of them, and is forgotten: a later ask reads again.
 */
export function readOnce<T>(context: Pick<IpDiscoveryContext, 'shared'>, key: string, read: () => Promise<T>): Promise<T> {
  const { shared } = context;
  if (!shared) return read();
  let pending = shared.get(key) as Promise<T> | undefined;
  if (!pending) {
    pending = read();
    shared.set(key, pending);
    pending.catch(() => shared.delete(key));
  }
  return pending;
}

export interface IpDiscoveryStrategy<Options = unknown> {
  /**
   * Addresses known now for the VM (all scopes; the caller filters). Never throws for "nothing found".
   * qemu-backend leaves out, with a warning naming the plugin, any entry whose `address` is not an IP
   * address of its `family`, or whose `scope` is not one of AddressScope.
   */
  discover(vm: VmNetworkIdentity, context: IpDiscoveryContext<Options>): Promise<DiscoveredAddress[]>;
  /**
   * Optional: resolves when something changed that may reveal an address for the VM (the lease file was
   * written, a neighbour entry appeared), or after `timeoutMs`, or when the signal aborts. Lets a waiting
   * caller react at once instead of polling. Without it, callers re-ask on a short interval.
   */
  waitForChange?(vm: VmNetworkIdentity, context: IpDiscoveryContext<Options> & { timeoutMs: number }): Promise<void>;
}

/** Classifies an address: loopback, link-local (169.254/16, fe80::/10) or global. */
export function scopeOf(address: string, family: AddressFamily): AddressScope {
  if (family === 'ipv4') {
    if (address.startsWith('127.')) return 'loopback';
    if (address.startsWith('169.254.')) return 'link-local';
    return 'global';
  }
  const lower = address.toLowerCase();
  if (lower === '::1') return 'loopback';
  if (/^fe[89ab][0-9a-f]:/.test(lower)) return 'link-local';
  return 'global';
}

export function normalizeMac(mac: string): string {
  return mac.trim().toLowerCase();
}
