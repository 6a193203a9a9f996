import { defineHandler } from '../../../core/plugin-api.ts';
import { listImages, resolveImage } from '../images.ts';
import { atMost } from '../at-most.ts';
import { qemuOptionsSchema } from '../options.ts';
import { listVmsPayload } from '../schemas.ts';

/** qemu-img processes at once: a folder of a hundred images must not start a hundred. */
const QEMU_IMG_AT_ONCE = 4;

/** The base images this host can create VMs from. */
export default defineHandler(listVmsPayload, qemuOptionsSchema, async (_payload, ctx) => {
  const names = await listImages(ctx.options.imagesDir);
  const asking = atMost(QEMU_IMG_AT_ONCE);
  const images = await Promise.all(
    names.map(async (name) => {
      const image = await asking(() => resolveImage(ctx.options.imagesDir, name, ctx.options.qemuImgBinary)).catch(() => undefined);
      if (!image) return { name, kind: 'unusable' as const };
      return image.kind === 'disk' ? { name, kind: image.kind, format: image.format } : { name, kind: image.kind };
    }),
  );
  return { host: ctx.host.id, images: images.filter((i) => i.kind !== 'unusable') };
});
