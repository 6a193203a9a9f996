/** Payloads of qemu-backend's messages: each declared once, validated by the agent before a worker sees it. */
import { z } from '../../core/plugin-api.ts';

/** `<host>.<8 lowercase letters>`: the id says which host owns the VM, so a client can route to it. */
export const VM_ID_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.[a-z]{8}$/;

export const vmIdSchema = z.string().max(80).regex(VM_ID_PATTERN, 'a VM id such as "node1.kqzvbxwe" (host id, ".", 8 lowercase letters)');

export const imageNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]*$/, 'an image name: letters, digits, ".", "_", "-", starting with a letter or digit (no "/")')
  .refine((name) => !name.includes('..'), 'an image name without ".."');

export const vmNameSchema = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]*$/, 'letters, digits, ".", "_", "-", starting with a letter or digit, at most 63 characters');

export const createVmPayload = z
  .object({
    image: imageNameSchema,
    name: vmNameSchema.optional(),
    /** MiB; the host's limits.maxMemoryMiB bounds it further. */
    memory: z.number().int().min(16).max(4 * 1024 * 1024),
    vcpus: z.number().int().min(1).max(1024),
    autostart: z.boolean().default(false),
    /** Overrides the host's network mode for this VM (`bridge` uses the host's configured bridge). */
    network: z.enum(['bridge', 'user', 'none']).optional(),
  })
  .strict();

export const vmRefPayload = z.object({ vm: vmIdSchema }).strict();

export const stopVmPayload = z
  .object({
    vm: vmIdSchema,
    /** Skip the guest's power-off: tell QEMU to quit at once (then SIGKILL if it must). */
    force: z.boolean().default(false),
    /** Overrides the host's stopTimeoutMs for this stop (the stop-vm pool allows 180 s in all). */
    timeoutMs: z.number().int().min(0).max(120_000).optional(),
  })
  .strict();

export const restartVmPayload = z
  .object({
    vm: vmIdSchema,
    /** `graceful`: power off through the guest, then start again. `hard`: reset the machine at once. */
    mode: z.enum(['graceful', 'hard']).default('graceful'),
  })
  .strict();

export const listVmsPayload = z.object({}).strict();

/** find-create: a create-vm request's id, as envelopes spell ids (1–128 printable ASCII, no spaces). */
export const findCreatePayload = z
  .object({ request: z.string().min(1).max(128).regex(/^[\x21-\x7e]+$/, 'a request id: 1–128 printable ASCII characters without spaces') })
  .strict();

export type CreateVmPayload = z.output<typeof createVmPayload>;
export type StopVmPayload = z.output<typeof stopVmPayload>;
export type RestartVmPayload = z.output<typeof restartVmPayload>;

export const getVmIpPayload = z
  .object({
    vm: vmIdSchema,
    /** Wait (with progress) until an address is known, up to timeoutMs. */
    wait: z.boolean().default(false),
    timeoutMs: z.number().int().min(0).max(600_000).default(60_000),
    /** Link-local and loopback addresses are left out unless asked for. */
    includeLinkLocal: z.boolean().default(false),
  })
  .strict();

export type GetVmIpPayload = z.output<typeof getVmIpPayload>;

/**
 * The most of a serial log one reply carries: half the default 1 MiB message limit, leaving room for JSON
 * escaping of a mostly printable log. A reply that still does not fit comes back as MESSAGE_TOO_LARGE.
 */
export const CONSOLE_LOG_MAX_BYTES = 512 * 1024;

export const getConsoleLogPayload = z
  .object({
    vm: vmIdSchema,
    /** The last this many lines... */
    lines: z.number().int().min(1).max(10_000).default(100),
    /** ...of at most the last this many bytes of the log. */
    maxBytes: z.number().int().min(1).max(CONSOLE_LOG_MAX_BYTES).default(64 * 1024),
  })
  .strict();

export type GetConsoleLogPayload = z.output<typeof getConsoleLogPayload>;
