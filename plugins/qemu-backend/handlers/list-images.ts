import { defineHandler } from '../../../core/plugin-api.ts';
import { listImages, resolveImage } from '../images.ts';
import { qemuOptionsSchema } from '../options.ts';
import { listVmsPayload } from '../schemas.ts';

/** The base images this host can create VMs from. */
export default defineHandler(listVmsPayload, qemuOptionsSchema, async (_payload, ctx) => {
  const names = await listImages(ctx.options.imagesDir);
  const images = await Promise.all(
    names.map(async (name) => {
      const image = await resolveImage(ctx.options.imagesDir, name, ctx.options.qemuImgBinary).catch(() => undefined);
      if (!image) return { name, kind: 'unusable' as const };
      return image.kind === 'disk' ? { name, kind: image.kind, format: image.format } : { name, kind: image.kind };
    }),
  );
  return { host: ctx.host.id, images: images.filter((i) => i.kind !== 'unusable') };
});
