/**
 * A VM's addresses from the host's ip-discovery plugins: asked in order, first hit or merged (config
 * `ipDiscovery`). With `wait`, it reacts to the strategies' change notifications (a lease written, a
 * neighbour appearing) and re-asks, until an address is known or the time is up.
 */
import { loadProviders, type HandlerContext } from '../../core/plugin-api.ts';
import type { DiscoveredAddress, IpDiscoveryStrategy, VmNetworkIdentity } from '../../core/capabilities/ip-discovery.ts';
import type { QemuOptions } from './options.ts';
import { vmPaths, type VmRecord } from './state.ts';

/** Strategies without change notifications are re-asked this often while waiting. */
const RECHECK_MS = 500;
/**
 * Strategies with change notifications are re-asked this often all the same: a change that happens while a
 * watcher is being set up (`ip monitor` listens a few ms after it starts) would otherwise wait out the slice.
 */
const CHANGE_RECHECK_MS = 1_000;

export interface AddressQuery {
  includeLinkLocal: boolean;
  wait: boolean;
  timeoutMs: number;
  /** Many VMs at once (list-vms): strategies answer from what they know, without probing. */
  passive?: boolean;
}

export interface AddressAnswer {
  addresses: DiscoveredAddress[];
  /** The strategies asked, in order. */
  strategies: string[];
}

export function identityOf(options: QemuOptions, record: VmRecord): VmNetworkIdentity {
  return {
    vm: record.id,
    mac: record.mac,
    ...(record.network.mode === 'bridge' ? { bridge: record.network.bridge } : {}),
    ...(options.guestAgent ? { guestAgentSocket: vmPaths(options.stateDir, record.id).qga } : {}),
  };
}

type Strategy = { plugin: string; options: unknown; implementation: IpDiscoveryStrategy };

export async function loadStrategies(options: QemuOptions, ctx: Pick<HandlerContext, 'providers'>): Promise<Strategy[]> {
  const all = await loadProviders<IpDiscoveryStrategy>(ctx, 'ip-discovery');
  if (!options.ipDiscovery.order) return all;
  return options.ipDiscovery.order.flatMap((name) => all.filter((s) => s.plugin === name));
}

async function askOnce(strategies: Strategy[], vm: VmNetworkIdentity, mode: 'first' | 'merge', query: AddressQuery, ctx: Pick<HandlerContext, 'signal' | 'log'>): Promise<DiscoveredAddress[]> {
  const merged: DiscoveredAddress[] = [];
  for (const strategy of strategies) {
    let found: DiscoveredAddress[] = [];
    try {
      found = await strategy.implementation.discover(vm, { options: strategy.options, signal: ctx.signal, log: ctx.log, passive: query.passive ?? false });
    } catch (error) {
      ctx.log.warn({ strategy: strategy.plugin, vm: vm.vm, err: error }, 'ip-discovery strategy failed; trying the next');
    }
    const usable = found.filter((a) => query.includeLinkLocal || a.scope === 'global');
    if (usable.length === 0) continue;
    if (mode === 'first') return usable;
    for (const address of usable) if (!merged.some((m) => m.address === address.address)) merged.push(address);
  }
  return merged;
}

export async function findAddresses(
  options: QemuOptions,
  strategies: Strategy[],
  record: VmRecord,
  query: AddressQuery,
  ctx: Pick<HandlerContext, 'signal' | 'log' | 'progress'>,
): Promise<AddressAnswer> {
  const vm = identityOf(options, record);
  const answer = (addresses: DiscoveredAddress[]) => ({ addresses, strategies: strategies.map((s) => s.plugin) });
  let addresses = await askOnce(strategies, vm, options.ipDiscovery.mode, query, ctx);
  if (addresses.length > 0 || !query.wait || strategies.length === 0) return answer(addresses);

  ctx.progress('waiting-for-ip', { vm: record.id, strategies: strategies.map((s) => s.plugin) });
  const deadline = Date.now() + query.timeoutMs;
  // Re-asked on a tick even when every strategy notifies: a change while a watcher is being set up (`ip
  // monitor` listens a few ms after it starts) is then seen within a tick, not at the end of the slice.
  const tickMs = strategies.every((s) => s.implementation.waitForChange) ? CHANGE_RECHECK_MS : RECHECK_MS;
  while (addresses.length === 0 && Date.now() < deadline && !ctx.signal.aborted) {
    // One set of watchers per slice (or until one of them fires); they stop with the slice, whatever happens.
    const sliceEnd = Date.now() + Math.min(deadline - Date.now(), 10_000);
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    try {
      let fired = false;
      const changed = new Promise<void>((resolve) => {
        for (const strategy of strategies) {
          const watch = strategy.implementation.waitForChange;
          if (!watch) continue;
          watch(vm, { options: strategy.options, signal: stop.signal, log: ctx.log, timeoutMs: sliceEnd - Date.now() }).then(
            () => {
              fired = true;
              resolve();
            },
            // A strategy that cannot watch (e.g. no bridge for this VM) leaves the others and the ticks to it.
            (error: unknown) => ctx.log.warn({ strategy: strategy.plugin, vm: vm.vm, err: error }, 'ip-discovery strategy cannot watch for changes; re-asking on a timer'),
          );
        }
      });
      while (addresses.length === 0 && !fired && Date.now() < sliceEnd && !ctx.signal.aborted) {
        await Promise.race([changed, sleep(Math.min(tickMs, sliceEnd - Date.now()), stop.signal)]);
        addresses = await askOnce(strategies, vm, options.ipDiscovery.mode, query, ctx);
      }
    } finally {
      stop.abort();
      ctx.signal.removeEventListener('abort', onAbort);
    }
  }
  return answer(addresses);
}

/** Resolves after `ms`, or at once when `signal` aborts; never leaves its timer behind. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal.addEventListener('abort', done, { once: true });
  });
}
