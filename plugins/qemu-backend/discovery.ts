/**
 * A VM's addresses from the host's ip-discovery plugins: asked in order, first hit or merged (config
 * `ipDiscovery`). With `wait`, it reacts to the strategies' change notifications (a lease written, a
 * neighbour appearing) and re-asks, until an address is known or the time is up.
 */
import { loadProviders, type HandlerContext } from '../../core/plugin-api.ts';
import { isIP } from 'node:net';
import type { AddressScope, DiscoveredAddress, IpDiscoveryStrategy, VmNetworkIdentity } from '../../core/capabilities/ip-discovery.ts';
import type { QemuOptions } from './options.ts';
import { qemuError } from './errors.ts';
import { vmPaths, type VmRecord } from './state.ts';

/** A wait that the message's deadline cuts ends this long before it, leaving time for the reply to travel. */
export const ANSWER_MARGIN_MS = 250;
/** Strategies without change notifications are re-asked this often while waiting. */
const RECHECK_MS = 500;
/**
 * Strategies with change notifications are re-asked this often all the same: a change that happens while a
 * watcher is being set up (`ip monitor` listens a few ms after it starts) would otherwise wait out the slice.
 */
const CHANGE_RECHECK_MS = 1_000;
/** A watcher that fires sooner than this after being set up saw nothing new happen: it is spinning. */
const IMMEDIATE_FIRE_MS = 50;
/**
 * A wait's re-asks are passive except this often: an active ask may make a strategy probe (ip-discovery-arp
 * sweeps the bridge subnet), and re-asking on every tick swept it about once a second for the whole wait.
 */
export const ACTIVE_ASK_EVERY_MS = 10_000;

export interface AddressQuery {
  includeLinkLocal: boolean;
  wait: boolean;
  timeoutMs: number;
  /**
   * Many VMs at once (list-vms): strategies answer from what they know, without probing. A wait asks
   * actively first, then passively except every `activeEveryMs` (default ACTIVE_ASK_EVERY_MS).
   */
  passive?: boolean;
  activeEveryMs?: number;
  /**
   * When the answer must be sent (the message's deadline, epoch ms): a wait ends ANSWER_MARGIN_MS before
   * it if that comes before `timeoutMs`, so the caller gets the wait's own answer, not the deadline's.
   */
  answerBy?: number;
  /** One memo for every ask of a list, so strategies read a per-host source once (IpDiscoveryContext.shared). */
  shared?: Map<string, Promise<unknown>>;
  /**
   * Asked between the asks of a wait: false once the VM's QEMU is gone (get-vm-ip does not wait for
   * stop-vm's lock), which ends the wait with IP_NOT_FOUND and `state: "stopped"`.
   */
  stillRunning?(): Promise<boolean>;
  /**
   * Epoch ms: only evidence at least this recent counts (the guest's last boot, for get-vm-ip's wait): a
   * lease or neighbour entry left from the previous boot would end the wait before the guest is up again.
   * An address without an age (a live answer, the guest agent's) always counts.
   */
  freshSince?: number;
}

/**
 * Lease times are whole seconds (dnsmasq writes the expiry in seconds), so evidence may look up to a second
 * older than it is; a boot comes long after the previous boot's last renewal.
 */
const FRESHNESS_SLACK_MS = 1_000;

function freshEnough(address: DiscoveredAddress, freshSince: number | undefined, now: number): boolean {
  return freshSince === undefined || address.ageMs === null || now - address.ageMs >= freshSince - FRESHNESS_SLACK_MS;
}

export interface AddressAnswer {
  addresses: DiscoveredAddress[];
  /** The strategies asked, in order. */
  strategies: string[];
  /** The wait was ended early by `answerBy` (it had `timeoutMs` left otherwise). */
  cutByDeadline?: boolean;
  /** How long the wait was allowed: `timeoutMs`, or less when `answerBy` came first. */
  waitMs?: number;
  /**
   * No address from since `freshSince` came in time, but older ones did: those are the answer (the guest
   * may not be up yet, or a strategy's age is off: a wrong lease time), rather than none at all.
   */
  staleOnly?: boolean;
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

/** Addresses a wait left out as older than `freshSince`, kept for its answer if nothing newer comes. */
type StaleSink = Map<string, DiscoveredAddress>;

/**
 * Asks the strategies in order. `signal` ends the ask (the wait's deadline, or the handler's own signal):
 * a strategy still working then is told through the same signal and counts as knowing nothing, even if it
 * ignores the signal, so a guest agent that never answers cannot hold get-vm-ip past its timeout.
 */
async function askOnce(
  strategies: Strategy[],
  vm: VmNetworkIdentity,
  mode: 'first' | 'merge',
  query: AddressQuery,
  ctx: Pick<HandlerContext, 'log'>,
  signal: AbortSignal,
  stale?: StaleSink,
): Promise<DiscoveredAddress[]> {
  const merged: DiscoveredAddress[] = [];
  for (const strategy of strategies) {
    if (signal.aborted) break;
    let found: DiscoveredAddress[] = [];
    try {
      found = await untilAborted(strategy.implementation.discover(vm, { options: strategy.options, signal, log: ctx.log, passive: query.passive ?? false, ...(query.shared ? { shared: query.shared } : {}) }), signal, []);
    } catch (error) {
      ctx.log.warn({ strategy: strategy.plugin, vm: vm.vm, err: error }, 'ip-discovery strategy failed; trying the next');
    }
    const now = Date.now();
    const inScope = wellFormed(found, strategy.plugin, ctx).filter((a) => query.includeLinkLocal || a.scope === 'global');
    const usable = inScope.filter((a) => freshEnough(a, query.freshSince, now));
    for (const old of inScope) if (!usable.includes(old)) stale?.set(old.address, old);
    if (usable.length === 0) continue;
    if (mode === 'first') return usable;
    for (const address of usable) if (!merged.some((m) => m.address === address.address)) merged.push(address);
  }
  return merged;
}

const FAMILY_OF_IP = { 4: 'ipv4', 6: 'ipv6' } as const;
const SCOPES: readonly unknown[] = ['global', 'link-local', 'loopback'] satisfies AddressScope[];

/**
 * The addresses of a strategy's answer that are what the capability promises. Strategies may be third-party
 * plugins and their answers go into replies and onto the operator's terminal: a malformed one is left out,
 * with a warning naming the strategy (not quoting what it sent).
 */
function wellFormed(found: unknown, plugin: string, ctx: Pick<HandlerContext, 'log'>): DiscoveredAddress[] {
  if (!Array.isArray(found)) {
    const kind = found === null ? 'null' : typeof found === 'object' ? 'an object' : `a ${typeof found}`;
    ctx.log.warn({ strategy: plugin }, `ip-discovery strategy "${plugin}" answered with ${kind}, not a list of addresses; ignored`);
    return [];
  }
  const good = found.filter(
    (a: unknown): a is DiscoveredAddress =>
      typeof a === 'object' &&
      a !== null &&
      typeof (a as DiscoveredAddress).address === 'string' &&
      FAMILY_OF_IP[isIP((a as DiscoveredAddress).address) as 4 | 6] === (a as DiscoveredAddress).family &&
      SCOPES.includes((a as DiscoveredAddress).scope),
  );
  if (good.length < found.length) {
    ctx.log.warn(
      { strategy: plugin, malformed: found.length - good.length },
      `ip-discovery strategy "${plugin}" answered ${found.length - good.length} malformed address(es) (each needs an IP address of its family, a family and a scope); left out`,
    );
  }
  return good;
}

export async function findAddresses(
  options: QemuOptions,
  strategies: Strategy[],
  record: VmRecord,
  query: AddressQuery,
  ctx: Pick<HandlerContext, 'signal' | 'log' | 'progress'>,
): Promise<AddressAnswer> {
  const vm = identityOf(options, record);
  const stale: StaleSink = new Map();
  const answer = (addresses: DiscoveredAddress[]): AddressAnswer => {
    const strategiesAsked = strategies.map((s) => s.plugin);
    if (addresses.length > 0 || stale.size === 0) return { addresses, strategies: strategiesAsked };
    ctx.log.warn({ vm: record.id, addresses: [...stale.keys()] }, 'only addresses seen before the VM last booted were found; answering with them');
    return { addresses: [...stale.values()], strategies: strategiesAsked, staleOnly: true };
  };
  // No time to wait (timeoutMs 0) is still time for one whole ask, as without `wait`.
  if (!query.wait || query.timeoutMs === 0) return answer(await askOnce(strategies, vm, options.ipDiscovery.mode, query, ctx, ctx.signal, stale));
  // The caller's timeout covers the whole call, the first ask included; an ask still running then is cut.
  // (A plain timer, not AbortSignal.timeout: that one is unref'd and would not keep a worker's loop alive.)
  const allowedMs = query.answerBy === undefined ? query.timeoutMs : Math.max(0, Math.min(query.timeoutMs, query.answerBy - ANSWER_MARGIN_MS - Date.now()));
  const cut = { cutByDeadline: allowedMs < query.timeoutMs, waitMs: allowedMs };
  const deadline = Date.now() + allowedMs;
  const waitOver = new AbortController();
  const timer = setTimeout(() => waitOver.abort(), allowedMs);
  try {
    return { ...answer(await waitForAddresses(strategies, vm, record, options, query, deadline, ctx, AbortSignal.any([ctx.signal, waitOver.signal]), stale)), ...cut };
  } finally {
    clearTimeout(timer);
  }
}

async function waitForAddresses(
  strategies: Strategy[],
  vm: VmNetworkIdentity,
  record: VmRecord,
  options: QemuOptions,
  query: AddressQuery,
  deadline: number,
  ctx: Pick<HandlerContext, 'signal' | 'log' | 'progress'>,
  askSignal: AbortSignal,
  stale: StaleSink,
): Promise<DiscoveredAddress[]> {
  const activeEveryMs = query.activeEveryMs ?? ACTIVE_ASK_EVERY_MS;
  let lastActiveAt = 0;
  const ask = () => {
    const passive = (query.passive ?? false) || Date.now() - lastActiveAt < activeEveryMs;
    if (!passive) lastActiveAt = Date.now();
    return askOnce(strategies, vm, options.ipDiscovery.mode, { ...query, passive }, ctx, askSignal, stale);
  };
  let addresses = await ask();
  if (addresses.length > 0 || strategies.length === 0) return addresses;

  ctx.progress('waiting-for-ip', { vm: record.id, strategies: strategies.map((s) => s.plugin) });
  // Re-asked on a tick even when every strategy notifies: a change while a watcher is being set up (`ip
  // monitor` listens a few ms after it starts) is then seen within a tick, not at the end of the slice.
  const tickMs = strategies.every((s) => s.implementation.waitForChange) ? CHANGE_RECHECK_MS : RECHECK_MS;
  // askSignal is the deadline's timer: it may fire a moment before Date.now() reaches `deadline`.
  while (addresses.length === 0 && Date.now() < deadline && !askSignal.aborted) {
    // One set of watchers per slice (or until one of them fires); they stop with the slice, whatever happens.
    const sliceEnd = Date.now() + Math.min(deadline - Date.now(), 10_000);
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    askSignal.addEventListener('abort', onAbort, { once: true });
    try {
      let fired = false;
      let firedAt = 0;
      const watchedAt = performance.now();
      const changed = new Promise<void>((resolve) => {
        for (const strategy of strategies) {
          const watch = strategy.implementation.waitForChange;
          if (!watch) continue;
          watch(vm, { options: strategy.options, signal: stop.signal, log: ctx.log, timeoutMs: sliceEnd - Date.now() }).then(
            () => {
              if (!fired) firedAt = performance.now();
              fired = true;
              resolve();
            },
            // A strategy that cannot watch (e.g. no bridge for this VM) leaves the others and the ticks to it.
            (error: unknown) => ctx.log.warn({ strategy: strategy.plugin, vm: vm.vm, err: error }, 'ip-discovery strategy cannot watch for changes; re-asking on a timer'),
          );
        }
      });
      while (addresses.length === 0 && !fired && Date.now() < sliceEnd && !askSignal.aborted) {
        await Promise.race([changed, sleep(Math.min(tickMs, sliceEnd - Date.now()), stop.signal)]);
        if (!askSignal.aborted) addresses = await ask();
        if (addresses.length === 0 && query.stillRunning && !(await query.stillRunning())) {
          throw qemuError('IP_NOT_FOUND', `${record.id} stopped while get-vm-ip waited for its address`, { vm: record.id, state: 'stopped' });
        }
      }
      // A watcher that fires the moment it is set up, for nothing the caller reports (a change it filters
      // out, or a watcher that always fires), would make the next slice start at once, and the next: a
      // spin. Such a slice is followed by a tick's pause. A watcher that fired later, for a real change
      // elsewhere (another VM's lease), starts the next slice at once, as it should.
      if (fired && addresses.length === 0 && firedAt - watchedAt < IMMEDIATE_FIRE_MS && !askSignal.aborted) {
        await sleep(Math.min(tickMs, Math.max(0, deadline - Date.now())), askSignal);
      }
    } finally {
      stop.abort();
      askSignal.removeEventListener('abort', onAbort);
    }
  }
  return addresses;
}

/** `work`'s value, or `fallback` as soon as `signal` aborts (what `work` does later is ignored). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal, fallback: T): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.resolve(fallback);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => resolve(fallback);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
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
