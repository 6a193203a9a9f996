/** protocol-aetherscale's options, as a host config gives them (`plugins: [{ use: protocol-aetherscale, options: … }]`). */
import { z } from '../../core/plugin-api.ts';

/** Exchange and queue names: what RabbitMQ accepts, minus the `amq.` prefix it reserves. */
const brokerName = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.:-]*$/, 'letters, digits, "_", ".", ":", "-", starting with a letter or digit')
  .refine((name) => !name.startsWith('amq.'), 'a name not starting with "amq." (reserved by RabbitMQ)');

/** amqplib's numeric URL parameters: a value that is no number fails at connect, with a confusing message. */
const NUMERIC_PARAMETERS = ['heartbeat', 'frameMax', 'channelMax'];

/** Why amqplib could not connect with `url` as written, or undefined: found at config check, not at start. */
export function brokerUrlProblem(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'not a URL amqplib can read (a port must be 1-65535)';
  }
  if (parsed.hostname === '') return 'no host: amqp[s]://[user:password@]host[:port][/vhost]';
  const odd = NUMERIC_PARAMETERS.find((name) => parsed.searchParams.has(name) && !/^\d+$/.test(parsed.searchParams.get(name) ?? ''));
  return odd === undefined ? undefined : `the parameter "${odd}" must be a whole number`;
}

export const aetherscaleOptionsSchema = z
  .object({
    /**
     * The broker the aetherscale clients use. Without it, CLOUDLET_AMQP_URL from the agent's environment.
     * Credentials are never logged.
     */
    url: z
      .string()
      .min(1)
      .max(2048)
      .regex(/^amqps?:\/\//, 'an amqp:// or amqps:// URL')
      .superRefine((url, ctx) => {
        const problem = brokerUrlProblem(url);
        if (problem) ctx.addIssue({ code: 'custom', message: `an amqp[s]://host[:port][/vhost] URL amqplib can use; this one: ${problem}` });
      })
      .optional(),
    /** The direct exchange the clients publish to, routing key = command. */
    exchange: brokerName.default('computing'),
    /** The durable queue shared by every host, where create-vm requests wait for one host to take them. */
    competingQueue: brokerName.default('computing-competing'),
    /** The original had no sizes in create-vm: every VM gets these. */
    memory: z.number().int().min(16).max(4 * 1024 * 1024).default(512),
    vcpus: z.number().int().min(1).max(1024).default(1),
    /** The original enabled each VM's systemd unit, so VMs came back after a host reboot; cloudlet's autostart does the same. */
    autostart: z.boolean().default(true),
    /** start/stop/delete/list requests this host works on at once (the per-host queue's prefetch). */
    prefetch: z.number().int().min(1).max(1_000).default(16),
    /**
     * A graceful stop can take up to qemu-backend's stopTimeoutMs, but clients listen for 5 s: after this long
     * the "stopped" reply goes out while the guest is still shutting down (as the original's did).
     */
    stopReplyAfterMs: z.number().int().min(0).max(600_000).default(4_000),
  })
  .strict();

export type AetherscaleOptions = z.output<typeof aetherscaleOptionsSchema>;
