/** The core's part of a host config. Each plugin validates its own `options` with its own schema. */
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import process from 'node:process';
import { z } from 'zod';
import { hostIdSchema, messageTypeSchema } from '../envelope.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const MiB = 1024 * 1024;
/** The most `limits.maxMessageBytes` may be set to: no message of any cloudlet is larger. */
export const MESSAGE_BYTES_CEILING = 64 * MiB;

export const poolSettingsSchema = z
  .object({
    minThreads: z.number().int().min(0).max(64),
    maxThreads: z.number().int().min(1).max(64),
    tasksPerThread: z.number().int().min(1).max(64),
    idleTimeoutMs: z.number().int().min(0).max(86_400_000),
    maxQueue: z.number().int().min(0).max(100_000),
    timeoutMs: z.number().int().min(1).max(86_400_000),
    cancelGraceMs: z.number().int().min(0).max(600_000),
    /** Heap limit of each worker thread: a handler that allocates without bound crashes its worker, not the agent. */
    maxMemoryMb: z.number().int().min(16).max(65_536),
  })
  .strict();

export const poolOverrideSchema = poolSettingsSchema.partial();
export type PoolOverride = z.infer<typeof poolOverrideSchema>;

export const defaultPoolSettings = {
  minThreads: 0,
  maxThreads: 2,
  tasksPerThread: 1,
  idleTimeoutMs: 60_000,
  maxQueue: 64,
  timeoutMs: 30_000,
  cancelGraceMs: 1_000,
  maxMemoryMb: 256,
} as const satisfies z.infer<typeof poolSettingsSchema>;

export const localTransportSchema = z
  .object({
    kind: z.literal('local'),
    /** Unix socket the agent listens on; defaults to `/run/cloudlet/agent.sock` (root) or a per-user path. */
    socket: z.string().min(1).max(107).optional(),
  })
  .strict();

function readableBrokerUrl(url: string): boolean {
  try {
    return new URL(url).hostname !== '';
  } catch {
    return false;
  }
}

export const amqpTransportSchema = z
  .object({
    kind: z.literal('amqp'),
    /** amqp://user:password@host:port/vhost — better given as CLOUDLET_AMQP_URL than written in the file. */
    url: z
      .string()
      .min(1)
      .max(2048)
      .regex(/^amqps?:\/\//, 'an amqp:// or amqps:// URL')
      // amqplib reads the URL with WHATWG URL and, when that fails, connects to nowhere with a confusing
      // error at start: so the file is blamed here, at check.
      .refine(readableBrokerUrl, 'a URL with a host, and a port from 1 to 65535 if one is given: amqp[s]://[user:password@]host[:port][/vhost]'),
    /** Namespaces every exchange and queue, so several clouds (or test runs) share one broker. */
    prefix: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'letters, digits, "_", "." and "-", starting with a letter or digit')
      .default('cloudlet'),
    /** Requests a host takes from the broker before acknowledging earlier ones. */
    prefetch: z.number().int().min(1).max(10_000).default(32),
    heartbeatMs: z.number().int().min(100).max(600_000).default(2_000),
    /** A host whose heartbeat is older than this is marked down. */
    downAfterMs: z.number().int().min(200).max(3_600_000).default(6_000),
    /** How often queue bindings are made again, ±20% (a deleted binding is announced by nothing). */
    bindingRefreshMs: z.number().int().min(100).max(3_600_000).default(30_000),
    /** A request delivered this many times without an outcome is dead-lettered instead of run again. */
    maxDeliveries: z.number().int().min(1).max(100).default(5),
    /** Outcomes kept on disk to answer redelivered requests without running them again. */
    outcomeHistory: z.number().int().min(100).max(1_000_000).default(10_000),
  })
  .strict();

export const transportSchema = z.discriminatedUnion('kind', [localTransportSchema, amqpTransportSchema]);

const keyName = z.string().min(1).max(64).regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'letters, digits, "_", ".", "-"');
const base64Key = z.string().min(40).max(200).regex(/^[A-Za-z0-9+/=]+$/, 'a base64 Ed25519 public key (SPKI DER), as `cloudlet keys generate` prints it');

export const securitySchema = z
  .object({
    /** Refuse requests that are not signed by a key in `clients`. */
    requireSignatures: z.boolean().default(false),
    /** Private key (PEM file, mode 600) this host signs its replies with. */
    hostKeyFile: z.string().min(1).max(1024).optional(),
    /** Keys allowed to command this host, each limited to message types ('*' for all). */
    clients: z
      .array(
        z
          .object({
            name: keyName,
            publicKey: base64Key,
            allow: z.array(z.union([z.literal('*'), messageTypeSchema])).min(1).max(200).default(['*']),
          })
          .strict(),
      )
      .max(1000)
      .default([]),
    /** Signed requests must carry a deadline at most this far ahead (bounds how long an id is remembered). */
    maxDeadlineMs: z.number().int().min(1_000).max(7 * 24 * 3600 * 1000).default(3_600_000),
    /** Client side: the private key (PEM file, mode 600) the CLI signs requests with. */
    clientKeyFile: z.string().min(1).max(1024).optional(),
    /** Client side: public keys of the hosts whose signed replies are trusted (host id → base64 key). */
    hostKeys: z.record(z.string().min(1).max(63), base64Key).default({}),
    /** Client side: refuse replies that are not signed by the host's key in `hostKeys`. */
    requireSignedReplies: z.boolean().default(false),
  })
  .strict();

export const routingSchema = z
  .object({
    /** Message types that, sent without a host, go to every live host and gather the replies. */
    broadcast: z.array(messageTypeSchema).max(200).default(['list-vms', 'host-info']),
    /** Message types that, sent without a host, go to one host with capacity (a competing queue). */
    any: z.array(messageTypeSchema).max(200).default(['create-vm']),
  })
  .strict();

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
      .object({
        maxMessageBytes: z.number().int().min(1024).max(MESSAGE_BYTES_CEILING).default(MiB),
        /** While a request runs, the host tells the caller it is still working this often ("alive" progress). */
        keepaliveMs: z.number().int().min(100).max(600_000).default(2_000),
      })
      .strict()
      .default({ maxMessageBytes: MiB, keepaliveMs: 2_000 }),
    shutdown: z
      .object({
        /** How long running messages may take to finish once a stop begins. */
        graceMs: z.number().int().min(0).max(600_000).default(10_000),
        /** How long each plugin's stop hook may take before shutdown goes on without it. */
        stopHookMs: z.number().int().min(100).max(600_000).default(15_000),
      })
      .strict()
      .default({ graceMs: 10_000, stopHookMs: 15_000 }),
    /** Per message type pool settings, e.g. `pools: { create-vm: { maxThreads: 4, timeoutMs: 300000 } }`. */
    pools: z.record(messageTypeSchema, poolOverrideSchema).default({}),
    /** How a client routes a message sent without a host (the host decides what it takes part in by plugins). */
    routing: routingSchema.default({ broadcast: ['list-vms', 'host-info'], any: ['create-vm'] }),
    security: securitySchema.default({ requireSignatures: false, clients: [], maxDeadlineMs: 3_600_000, hostKeys: {}, requireSignedReplies: false }),
    state: z
      .object({
        /** Where this host keeps lasting state (outcomes of handled requests; VM records in later plugins). */
        dir: z.string().min(1).max(1024).optional(),
      })
      .strict()
      .default({}),
    plugins: z.array(pluginEntrySchema).max(100).default([]),
  })
  .strict();

export type CoreConfig = z.output<typeof coreConfigSchema>;
export type AmqpTransportConfig = z.output<typeof amqpTransportSchema>;
export type RoutingConfig = z.output<typeof routingSchema>;
export type SecurityConfig = z.output<typeof securitySchema>;

/** `/var/lib/cloudlet` for root (a system service); a per-user folder otherwise. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (process.getuid?.() === 0) return '/var/lib/cloudlet';
  const base = env.XDG_STATE_HOME || join(env.HOME || tmpdir(), '.local', 'state');
  return join(base, 'cloudlet');
}
export type PoolSettingsConfig = z.output<typeof poolSettingsSchema>;
export type PluginEntry = z.output<typeof pluginEntrySchema>;
