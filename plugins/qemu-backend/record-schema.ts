/**
 * What a vm.json must hold to be used. A record's values reach QEMU's argv (`-m`, `-smp`, `mac=`, `ifname=`)
 * and `ip` commands, and vm.json is a file anyone with access to the state folder can edit or restore: each
 * field is checked as strictly as the payload that made it, and the record must name its own folder.
 */
import { z } from '../../core/plugin-api.ts';
import { interfaceName } from './options.ts';
import { imageNameSchema, vmIdSchema, vmNameSchema } from './schemas.ts';

const recordSchema = z.object({
  v: z.literal(1),
  id: vmIdSchema,
  host: z.string().min(1).max(63),
  name: vmNameSchema.optional(),
  image: imageNameSchema,
  imageKind: z.enum(['disk', 'kernel']),
  memoryMiB: z.number().int().min(16).max(4 * 1024 * 1024),
  vcpus: z.number().int().min(1).max(1024),
  mac: z.string().regex(/^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/, 'a MAC address: six lowercase hex pairs joined by ":"'),
  network: z.discriminatedUnion('mode', [
    z.object({ mode: z.literal('bridge'), bridge: interfaceName, tap: interfaceName }),
    z.object({ mode: z.literal('user') }),
    z.object({ mode: z.literal('none') }),
  ]),
  autostart: z.boolean(),
  desired: z.enum(['running', 'stopped']),
  createdAt: z.string().max(64),
  updatedAt: z.string().max(64),
  // As a request envelope's id (core/envelope.ts): printable ASCII without spaces.
  request: z.string().min(1).max(128).regex(/^[\x21-\x7e]+$/, 'a request id: printable ASCII without spaces, 1–128 characters').optional(),
});

/** Undefined when `value` is a usable record of VM `id`; else the first thing wrong, as "field: why". */
export function checkRecord(value: unknown, id: string): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return `not an object (${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value})`;
  const parsed = recordSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return `${issue?.path.join('.') ?? '?'}: ${issue?.message ?? 'invalid'}`;
  }
  if (parsed.data.id !== id) return `names another VM (${parsed.data.id}): a record belongs in the folder of its id`;
  return undefined;
}
