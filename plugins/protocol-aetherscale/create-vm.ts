/**
 * create-vm → cloudlet create-vm with the plugin's sizes. Two replies, as later versions of the original sent:
 * `allocating` once the VM has an id (cloudlet's "starting" progress), then `starting` when QEMU runs.
 */
import type { CommandContext, Outcome } from './commands.ts';
import { availableImages, reasonFor } from './reasons.ts';
import { clientVmId } from './vm-ids.ts';
import { failure, shown, success } from './wire.ts';

/** Options the original understood that cloudlet has no counterpart for: accepted, named in a hint. */
export const IGNORED_CREATE_OPTIONS = ['init-script', 'public-ip', 'vpn'] as const;

const DISK_EXTENSION = /\.(qcow2|raw|img)$/i;
const IMAGE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/;

/** The original used only the base name (`os.path.basename`) and added `.qcow2` itself. */
export function imageBaseName(value: unknown): { ok: true; name: string } | { ok: false; reason: string } {
  if (value === undefined || value === null || value === '') return { ok: false, reason: 'Image not specified' };
  if (typeof value !== 'string') return { ok: false, reason: `Image must be a string (a base image name), got ${shown(value)}` };
  const name = (value.split(/[\\/]/).pop() ?? '').replace(DISK_EXTENSION, '');
  if (name === '') return { ok: false, reason: 'Image not specified' };
  if (!IMAGE_NAME.test(name) || name.includes('..')) {
    return { ok: false, reason: `Image "${name.slice(0, 100)}" is not a valid image name (letters, digits, ".", "_", "-"; at most 64)` };
  }
  return { ok: true, name };
}

function ignoredHint(ignored: readonly string[]): string {
  const why = [
    ...(ignored.includes('init-script') ? ['cloudlet runs no init scripts'] : []),
    ...(ignored.some((key) => key !== 'init-script') ? ['the VM gets the network this host is configured with'] : []),
  ];
  return `this host ignores ${ignored.join(', ')}: ${why.join(', and ')}`;
}

export async function createVm(options: Record<string, unknown>, ctx: CommandContext): Promise<Outcome> {
  const image = imageBaseName(options.image);
  if (!image.ok) {
    await ctx.reply(failure(image.reason));
    return { kind: 'answered', command: 'create-vm' };
  }
  const ignored = IGNORED_CREATE_OPTIONS.filter((key) => options[key] !== undefined);
  let allocated: string | undefined;
  let announcing: Promise<void> | undefined;
  let announceFailed: unknown;
  const announce = (vm: string) => {
    allocated = vm;
    announcing = ctx.reply(success({ status: 'allocating', 'vm-id': clientVmId(vm) })).catch((error: unknown) => {
      announceFailed = error;
    });
  };
  const reply = await ctx.dispatch(
    'create-vm',
    { image: image.name, memory: ctx.options.memory, vcpus: ctx.options.vcpus, autostart: ctx.options.autostart },
    {
      onProgress: (stage, detail) => {
        if (stage === 'starting' && allocated === undefined && typeof detail?.vm === 'string') announce(detail.vm);
      },
    },
  );
  await announcing;
  if (announceFailed) throw announceFailed;
  if (!reply.ok) {
    const { code } = reply.error;
    if (allocated === undefined && (code === 'NO_CAPACITY' || code === 'SHUTTING_DOWN')) {
      return { kind: 'elsewhere', command: 'create-vm', code, reason: reply.error.message };
    }
    // Hosts need not have the same images: another one may have it.
    if (allocated === undefined && code === 'IMAGE_NOT_FOUND') {
      return { kind: 'elsewhere', command: 'create-vm', code, reason: reasonFor(reply.error), image: image.name, available: availableImages(reply.error.details) };
    }
    ctx.log.info({ code, image: image.name }, `aetherscale create-vm failed: ${reply.error.message}`);
    await ctx.reply(failure(reasonFor(reply.error)));
    return { kind: 'answered', command: 'create-vm' };
  }
  const vm = (reply.result as { id?: unknown } | null)?.id;
  if (typeof vm !== 'string') {
    await ctx.reply(failure('the VM was created, but the host did not say its id (INVALID_RESULT)'));
    return { kind: 'answered', command: 'create-vm' };
  }
  if (allocated === undefined) {
    announce(vm);
    await announcing;
    if (announceFailed) throw announceFailed;
  }
  const hint = ignored.length > 0 ? ignoredHint(ignored) : undefined;
  ctx.log.info({ vm, image: image.name, ignored }, 'aetherscale create-vm: VM created');
  await ctx.reply(success({ status: 'starting', 'vm-id': clientVmId(vm), ...(hint ? { hint } : {}) }));
  return { kind: 'answered', command: 'create-vm' };
}
