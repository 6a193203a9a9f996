/** The shape a plugin's default export must have, checked at load before any of its code runs further. */
import semver from 'semver';
import { z } from 'zod';
import { ERROR_CODE_PATTERN } from '../errors.ts';
import { messageTypeSchema } from '../envelope.ts';
import { poolOverrideSchema } from '../config/schema.ts';

export const PLUGIN_NAME_PATTERN = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;
export const CAPABILITY_PATTERN = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;

const pluginName = z.string().max(64).regex(PLUGIN_NAME_PATTERN, 'lowercase words joined by "-", e.g. "ip-discovery-arp"');
const capability = z.string().max(64).regex(CAPABILITY_PATTERN, 'lowercase words joined by "-", e.g. "vm-backend"');
const semverVersion = z.string().refine((v) => semver.valid(v) !== null, 'a semver version such as "1.2.3"');
const semverRange = z.string().refine((r) => semver.validRange(r) !== null, 'a semver range such as "^1.0.0"');
const zodSchema = z.custom<z.ZodType>(
  (value) => typeof value === 'object' && value !== null && typeof (value as { safeParse?: unknown }).safeParse === 'function',
  'a zod schema',
);
const hook = z.custom<(...args: unknown[]) => unknown>((value) => typeof value === 'function', 'a function').optional();

export const pluginDefinitionSchema = z.object({
  name: pluginName,
  version: semverVersion,
  api: semverRange,
  description: z.string().max(500).optional(),
  dependencies: z.record(pluginName, semverRange).optional(),
  provides: z.array(capability).max(32).optional(),
  requires: z.array(capability).max(32).optional(),
  capabilityModules: z.record(capability, z.union([z.instanceof(URL), z.string()])).optional(),
  options: zodSchema.optional(),
  messages: z
    .record(
      messageTypeSchema,
      z.object({
        payload: zodSchema,
        handler: z.union([z.instanceof(URL), z.string()]),
        description: z.string().max(500).optional(),
        pool: poolOverrideSchema.optional(),
        serializeBy: z.string().min(1).max(64).optional(),
        handlesRepeats: z.boolean().optional(),
        seesInFlight: z.array(messageTypeSchema).max(32).optional(),
      }).strict(),
    )
    .optional(),
  errors: z
    .record(
      z.string().regex(ERROR_CODE_PATTERN, 'SCREAMING_SNAKE_CASE, 2–64 characters'),
      z.object({ message: z.string().min(1), retryable: z.boolean() }).strict(),
    )
    .optional(),
  hooks: z.object({ init: hook, start: hook, stop: hook }).strict().optional(),
  checkOptions: hook,
}).strict(); // a misspelt key ("dependecies") is an error, not silently ignored

/** The keys an object of the definition takes at `path` (e.g. `[]`, `['messages', 'vm.create']`), if it is one. */
export function definitionKeysAt(path: readonly PropertyKey[]): string[] | undefined {
  const unwrap = (schema: z.ZodType): z.ZodType => (schema instanceof z.ZodOptional ? unwrap(schema.unwrap() as z.ZodType) : schema);
  let schema: z.ZodType | undefined = pluginDefinitionSchema;
  for (const key of path) {
    const here = unwrap(schema);
    if (here instanceof z.ZodObject) schema = (here.shape as Record<string, z.ZodType | undefined>)[String(key)];
    else if (here instanceof z.ZodRecord) schema = here.valueType as z.ZodType;
    else return undefined;
    if (schema === undefined) return undefined;
  }
  const last = unwrap(schema);
  return last instanceof z.ZodObject ? Object.keys(last.shape) : undefined;
}
