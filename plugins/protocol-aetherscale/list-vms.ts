/** list-vms → cloudlet list-vms; each host answers with its own VMs and their global addresses. */
import { z } from '../../core/plugin-api.ts';
import type { CommandContext, Outcome } from './commands.ts';
import { isShuttingDown, reasonFor } from './reasons.ts';
import { clientVmId } from './vm-ids.ts';
import { failure, success, type Command } from './wire.ts';

/** The part of qemu-backend's list-vms result used here; anything else in it is ignored. */
const listedVms = z.object({
  vms: z.array(
    z.object({
      id: z.string(),
      state: z.string(),
      addresses: z.array(z.object({ address: z.string(), scope: z.string().optional() })).default([]),
    }),
  ),
});

export type ListedVm = z.output<typeof listedVms>['vms'][number];

/**
 * This host's VMs as cloudlet lists them, or the reply that ended the request. A host draining for shutdown
 * cannot list them; it says so rather than stay silent, since the request is acked either way and a VM
 * command for one of its VMs would otherwise go unanswered. (A host that owns no such VM answers too then:
 * it cannot tell.)
 */
export async function ownVms(ctx: CommandContext, command: Command): Promise<{ ok: true; vms: ListedVm[] } | { ok: false; outcome: Outcome }> {
  const reply = await ctx.dispatch('list-vms', {});
  if (isShuttingDown(reply)) {
    await ctx.reply(failure(`host ${ctx.host} is shutting down: ${command} cannot be answered now; send it again once the host is back`));
    return { ok: false, outcome: { kind: 'answered', command } };
  }
  if (!reply.ok) {
    await ctx.reply(failure(`host ${ctx.host} could not list its VMs: ${reasonFor(reply.error)}`));
    return { ok: false, outcome: { kind: 'answered' } };
  }
  const parsed = listedVms.safeParse(reply.result);
  if (!parsed.success) {
    await ctx.reply(failure(`host ${ctx.host} listed its VMs in an unexpected shape (INVALID_RESULT)`));
    return { ok: false, outcome: { kind: 'answered' } };
  }
  return { ok: true, vms: parsed.data.vms };
}

export function describeVm(vm: ListedVm): { 'vm-id': string; 'ip-addresses': string[]; hint?: string } {
  const letters = clientVmId(vm.id);
  // Global addresses only: a link-local address is of no use to a client elsewhere on the network.
  const addresses = [...new Set(vm.addresses.filter((a) => a.scope === undefined || a.scope === 'global').map((a) => a.address))];
  const entry: { 'vm-id': string; 'ip-addresses': string[]; hint?: string } = { 'vm-id': letters, 'ip-addresses': addresses };
  if (vm.state === 'stopped') entry.hint = `VM "${letters}" is not running`;
  else if (addresses.length === 0) entry.hint = 'Could not retrieve IP address for guest';
  return entry;
}

export async function listVms(_options: Record<string, unknown>, ctx: CommandContext): Promise<Outcome> {
  const listed = await ownVms(ctx, 'list-vms');
  if (!listed.ok) return listed.outcome;
  await ctx.reply(success(listed.vms.map(describeVm)));
  return { kind: 'answered', command: 'list-vms' };
}
