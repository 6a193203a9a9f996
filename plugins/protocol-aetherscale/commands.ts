/**
 * One aetherscale request in, cloudlet messages out (through ctx.dispatch: the host's own handlers, pools
 * and validation), replies in the original shapes back. Knows nothing of RabbitMQ: the broker side gives it
 * a body and a way to reply, and acts on the outcome.
 */
import type { DispatchReply, PluginLogger } from '../../core/plugin-api.ts';
import type { AetherscaleOptions } from './options.ts';
import { createVm } from './create-vm.ts';
import { listVms } from './list-vms.ts';
import { deleteVm, startVm, stopVm } from './vm-commands.ts';
import { failure, parseRequest, type AetherscaleReply, type Command, type Route } from './wire.ts';

export type Dispatch = (
  type: string,
  payload: unknown,
  options?: { deadline?: number; onProgress?: (stage: string, detail?: Record<string, unknown>) => void },
) => Promise<DispatchReply>;

export interface CommandContext {
  host: string;
  options: AetherscaleOptions;
  dispatch: Dispatch;
  log: PluginLogger;
  /** Sends one reply body to the client; resolves when the broker has it. */
  reply(body: AetherscaleReply): Promise<void>;
}

export type Outcome =
  /** Every reply was sent. */
  | { kind: 'answered'; command?: Command }
  /** Not for this host (it does not own the VM, or it is shutting down): no reply, so the owner's is the only one. */
  | { kind: 'silent'; command: Command; why: string }
  /**
   * A create-vm this host cannot take (full, shutting down, or without the image); another host may: the
   * broker side hands it on or requeues it. `reason` is the text to answer with if no host takes it.
   */
  | { kind: 'elsewhere'; command: Command; code: 'NO_CAPACITY' | 'SHUTTING_DOWN' | 'IMAGE_NOT_FOUND'; reason: string; image?: string; available?: string[] };

const handlers: Record<Command, (options: Record<string, unknown>, ctx: CommandContext) => Promise<Outcome>> = {
  'create-vm': createVm,
  'list-vms': listVms,
  'start-vm': startVm,
  'stop-vm': stopVm,
  'delete-vm': deleteVm,
};

export async function runCommand(body: Uint8Array, route: Route, ctx: CommandContext): Promise<Outcome> {
  const request = parseRequest(body, route);
  if (!request.ok) {
    ctx.log.info({ route, reason: request.reason }, 'bad aetherscale request: answered with an error');
    await ctx.reply(failure(request.reason));
    return { kind: 'answered' };
  }
  return handlers[request.command](request.options, ctx);
}
