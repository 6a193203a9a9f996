import { defineHandler } from '../../../core/plugin-api.ts';
import { listImages, resolveImage } from '../images.ts';
import { qemuOptionsSchema } from '../options.ts';
import { listVmsPayload } from '../schemas.ts';

/** qemu-img processes at once: a folder of a hundred images must not start a hundred. */
const QEMU_IMG_AT_ONCE = 4;

/** The base images this host can create VMs from. */
export default defineHandler(listVmsPayload, qemuOptionsSchema, async (_payload, ctx) => {
  const names = await listImages(ctx.options.imagesDir);
  const images = await mapAtMost(QEMU_IMG_AT_ONCE, names, async (name) => {
    const image = await resolveImage(ctx.options.imagesDir, name, ctx.options.qemuImgBinary).catch(() => undefined);
    if (!image) return { name, kind: 'unusable' as const };
    return image.kind === 'disk' ? { name, kind: image.kind, format: image.format } : { name, kind: image.kind };
  });
  return { host: ctx.host.id, images: images.filter((i) => i.kind !== 'unusable') };
});

/** `work` for each item, at most `limit` at a time; results in the items' order. */
async function mapAtMost<T, R>(limit: number, items: readonly T[], work: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
