/**
 * start-vm, stop-vm and delete-vm reach every host. Only the owner answers: the others stay silent instead
 * of saying "VM does not exist", so a client hears one clear reply (the original answered from every host).
 */
import type { DispatchReply } from '../../core/plugin-api.ts';
import type { CommandContext, Outcome } from './commands.ts';
import { ownVms, type ListedVm } from './list-vms.ts';
import { reasonFor } from './reasons.ts';
import { findOwnVm, parseVmRef } from './vm-ids.ts';
import { failure, pythonTruthy, success, type Command } from './wire.ts';

type Owned = { ok: true; id: string; clientId: string; vm: ListedVm } | { ok: false; outcome: Outcome };

async function resolveOwnVm(command: Command, options: Record<string, unknown>, ctx: CommandContext): Promise<Owned> {
  const given = options['vm-id'];
  if (given === undefined || given === null || given === '') {
    // Every host receives the request and none can tell who else will answer: each says what is wrong.
    await ctx.reply(failure('VM ID not specified'));
    return { ok: false, outcome: { kind: 'answered', command } };
  }
  const ref = parseVmRef(given);
  if (ref.kind === 'invalid') {
    await ctx.reply(failure(ref.reason));
    return { ok: false, outcome: { kind: 'answered', command } };
  }
  if (ref.kind === 'full' && ref.host !== ctx.host) return { ok: false, outcome: { kind: 'silent', command, why: `the VM belongs to host ${ref.host}` } };
  const listed = await ownVms(ctx, command);
  if (!listed.ok) return { ok: false, outcome: listed.outcome };
  const id = findOwnVm(ref, listed.vms.map((vm) => vm.id));
  const vm = listed.vms.find((candidate) => candidate.id === id);
  if (id === undefined || vm === undefined) return { ok: false, outcome: { kind: 'silent', command, why: 'no such VM on this host' } };
  return { ok: true, id, clientId: given as string, vm };
}

async function answerFailure(command: Command, reply: Extract<DispatchReply, { ok: false }>, ctx: CommandContext, vm: string): Promise<Outcome> {
  ctx.log.info({ vm, code: reply.error.code }, `aetherscale ${command} failed: ${reply.error.message}`);
  await ctx.reply(failure(reasonFor(reply.error)));
  return { kind: 'answered', command };
}

export async function startVm(options: Record<string, unknown>, ctx: CommandContext): Promise<Outcome> {
  const owned = await resolveOwnVm('start-vm', options, ctx);
  if (!owned.ok) return owned.outcome;
  const reply = await ctx.dispatch('start-vm', { vm: owned.id });
  if (!reply.ok) return answerFailure('start-vm', reply, ctx, owned.id);
  const already = (reply.result as { already?: unknown } | null)?.already === true;
  ctx.log.info({ vm: owned.id, already }, 'aetherscale start-vm: VM running');
  await ctx.reply(success({ status: 'starting', 'vm-id': owned.clientId, ...(already ? { hint: `VM "${owned.clientId}" was already started` } : {}) }));
  return { kind: 'answered', command: 'start-vm' };
}

export async function stopVm(options: Record<string, unknown>, ctx: CommandContext): Promise<Outcome> {
  const owned = await resolveOwnVm('stop-vm', options, ctx);
  if (!owned.ok) return owned.outcome;
  const kill = pythonTruthy(options.kill);
  const status = kill ? 'killed' : 'stopped';
  const stopping = ctx.dispatch('stop-vm', { vm: owned.id, force: kill });
  // A graceful stop lasts as long as the guest takes to power off; clients listen for 5 s. The original
  // answered as soon as it had pressed the power button, so a late "stopped" is what its clients expect.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const early = await Promise.race([stopping, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ctx.options.stopReplyAfterMs)))]);
  clearTimeout(timer);
  if (early === undefined) {
    await ctx.reply(success({ status, 'vm-id': owned.clientId, hint: `VM "${owned.clientId}" is still shutting down` }));
    const late = await stopping;
    // The client may still be listening: a stop that failed after all is worth a second reply.
    if (!late.ok) return answerFailure('stop-vm', late, ctx, owned.id);
    ctx.log.info({ vm: owned.id, how: (late.result as { how?: unknown } | null)?.how }, 'aetherscale stop-vm: VM stopped (after the reply)');
    return { kind: 'answered', command: 'stop-vm' };
  }
  if (!early.ok) return answerFailure('stop-vm', early, ctx, owned.id);
  const how = (early.result as { how?: unknown } | null)?.how;
  ctx.log.info({ vm: owned.id, how }, 'aetherscale stop-vm: VM stopped');
  await ctx.reply(success({ status, 'vm-id': owned.clientId, ...(how === 'already-stopped' ? { hint: `VM "${owned.clientId}" was not running` } : {}) }));
  return { kind: 'answered', command: 'stop-vm' };
}

export async function deleteVm(options: Record<string, unknown>, ctx: CommandContext): Promise<Outcome> {
  const owned = await resolveOwnVm('delete-vm', options, ctx);
  if (!owned.ok) return owned.outcome;
  const reply = await ctx.dispatch('delete-vm', { vm: owned.id });
  if (!reply.ok) return answerFailure('delete-vm', reply, ctx, owned.id);
  ctx.log.info({ vm: owned.id }, 'aetherscale delete-vm: VM deleted');
  await ctx.reply(success({ status: 'deleted', 'vm-id': owned.clientId }));
  return { kind: 'answered', command: 'delete-vm' };
}
