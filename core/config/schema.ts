/** The core's part of a host config. Each plugin validates its own `options` with its own schema. */
import { hostname } from 'node:os';
import { z } from 'zod';
import { hostIdSchema, messageTypeSchema } from '../envelope.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const MiB = 1024 * 1024;

export const poolSettingsSchema = z
  .object({
    minThreads: z.number().int().min(0).max(64),
    maxThreads: z.number().int().min(1).max(64),
    idleTimeoutMs: z.number().int().min(0).max(86_400_000),
    maxQueue: z.number().int().min(0).max(100_000),
    timeoutMs: z.number().int().min(1).max(86_400_000),
    cancelGraceMs: z.number().int().min(0).max(600_000),
  })
  .strict();

export const poolOverrideSchema = poolSettingsSchema.partial();

export const defaultPoolSettings = {
  minThreads: 0,
  maxThreads: 2,
  idleTimeoutMs: 60_000,
  maxQueue: 64,
  timeoutMs: 30_000,
  cancelGraceMs: 1_000,
} as const satisfies z.infer<typeof poolSettingsSchema>;

export const localTransportSchema = z
  .object({
    kind: z.literal('local'),
    /** Unix socket the agent listens on; defaults to `/run/cloudlet/agent.sock` (root) or a per-user path. */
    socket: z.string().min(1).max(107).optional(),
  })
  .strict();

export const transportSchema = z.discriminatedUnion('kind', [localTransportSchema]);

export const pluginEntrySchema = z
  .object({
    /** A built-in plugin name, an npm package name, or a file path (starting with `./`, `../` or `/`). */
    use: z.string().min(1).max(1024),
    options: z.unknown().optional(),
  })
  .strict();

/** Host ids are DNS-label-like; the OS hostname is used when it already fits. */
export function defaultHostId(): string {
  const candidate = hostname().split('.')[0]?.toLowerCase() ?? '';
  return hostIdSchema.safeParse(candidate).success ? candidate : 'localhost';
}

export const coreConfigSchema = z
  .object({
    host: z
      .object({ id: hostIdSchema.optional() })
      .strict()
      .default({}),
    transport: transportSchema.default({ kind: 'local' }),
    log: z
      .object({
        level: z.enum(LOG_LEVELS).default('info'),
        /** `auto`: readable lines on a terminal, JSON otherwise (e.g. under systemd). */
        format: z.enum(['auto', 'json', 'pretty']).default('auto'),
      })
      .strict()
      .default({ level: 'info', format: 'auto' }),
    limits: z
      .object({ maxMessageBytes: z.number().int().min(1024).max(64 * MiB).default(MiB) })
      .strict()
      .default({ maxMessageBytes: MiB }),
    shutdown: z
      .object({ graceMs: z.number().int().min(0).max(600_000).default(10_000) })
      .strict()
      .default({ graceMs: 10_000 }),
    /** Per message type pool settings, e.g. `pools: { create-vm: { maxThreads: 4, timeoutMs: 300000 } }`. */
    pools: z.record(messageTypeSchema, poolOverrideSchema).default({}),
    plugins: z.array(pluginEntrySchema).max(100).default([]),
  })
  .strict();

export type CoreConfig = z.output<typeof coreConfigSchema>;
export type PoolSettingsConfig = z.output<typeof poolSettingsSchema>;
export type PluginEntry = z.output<typeof pluginEntrySchema>;
