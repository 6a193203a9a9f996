/**
 * VMs by state, for the `cloudlet_vms` gauge. The core does not know VMs; the host's VM backend answers
 * `list-vms`, which the plugin sends to its own host (ctx.dispatch) when scraped, at most once per maxAgeMs.
 */
import type { PluginHookContext } from '../../core/plugin-api.ts';

export interface VmStateCounts {
  /** Count per state (`running`, `stopped`, …); empty when unknown. */
  counts: Map<string, number>;
  /** False when the last ask failed (no VM backend, or it erred). */
  ok: boolean;
}

export function vmStateCache(dispatch: PluginHookContext<unknown>['dispatch'], maxAgeMs: number): () => Promise<VmStateCounts> {
  let cached: { at: number; value: VmStateCounts } | undefined;
  let pending: Promise<VmStateCounts> | undefined;
  const ask = async (): Promise<VmStateCounts> => {
    const reply = await dispatch('list-vms', {}, { deadline: Date.now() + 10_000 });
    if (!reply.ok) return { counts: new Map(), ok: false };
    const counts = new Map<string, number>();
    for (const vm of (reply.result as { vms?: { state?: unknown }[] } | undefined)?.vms ?? []) {
      const state = typeof vm.state === 'string' ? vm.state : 'unknown';
      counts.set(state, (counts.get(state) ?? 0) + 1);
    }
    return { counts, ok: true };
  };
  return async () => {
    if (cached && Date.now() - cached.at < maxAgeMs) return cached.value;
    // Concurrent scrapes share one ask.
    pending ??= ask()
      .catch((): VmStateCounts => ({ counts: new Map(), ok: false }))
      .then((value) => {
        cached = { at: Date.now(), value };
        pending = undefined;
        return value;
      });
    return pending;
  };
}
