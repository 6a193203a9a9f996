/** qemu-backend's options, as a host config gives them (`plugins: [{ use: qemu-backend, options: … }]`). */
import { z } from '../../core/plugin-api.ts';

/** QEMU parses `,` inside option values as a separator: a path with one could inject options. */
const qemuSafePath = z
  .string()
  .min(1)
  .max(200)
  .regex(/^\/[^,\0\n]*$/, 'an absolute path without "," (QEMU would read a comma as an option separator)');

export const interfaceName = z
  .string()
  .min(1)
  .max(15)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'a network interface name: letters, digits, "_", ".", "-", at most 15 characters');

export const networkOptionsSchema = z.discriminatedUnion('mode', [
  /** Each VM gets a tap device on this existing bridge. */
  z.object({ mode: z.literal('bridge'), bridge: interfaceName }).strict(),
  /** QEMU's user-mode networking (no bridge needed; no inbound connections). */
  z.object({ mode: z.literal('user') }).strict(),
  z.object({ mode: z.literal('none') }).strict(),
]);

export const qemuOptionsSchema = z
  .object({
    /** Base images: NAME.qcow2, NAME.raw or NAME.img disks, or a NAME/ folder with vmlinuz and initrd.img. */
    imagesDir: qemuSafePath,
    /**
     * One folder per VM: its record, overlay disk, QMP and guest-agent sockets, serial log, pidfile. Keep it
     * short: a unix socket path (stateDir + VM id + "/qmp.sock") must stay under 108 bytes.
     */
    stateDir: qemuSafePath.refine((path) => path.length <= 80, 'at most 80 characters (unix socket paths are limited to 108 bytes)').default('/var/lib/cloudlet/qemu'),
    qemuBinary: z.string().min(1).max(200).default('qemu-system-x86_64'),
    qemuImgBinary: z.string().min(1).max(200).default('qemu-img'),
    ipBinary: z.string().min(1).max(200).default('ip'),
    /** `auto`: KVM when /dev/kvm is usable, else TCG (software emulation). */
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    machine: z.enum(['pc', 'q35']).default('pc'),
    network: networkOptionsSchema.default({ mode: 'user' }),
    /** Tap devices are named TAPPREFIX + 8 letters of the VM id (15 characters at most in all). */
    tapPrefix: z
      .string()
      .regex(/^[a-z][a-z0-9]{0,6}$/, 'lowercase letters and digits, starting with a letter, at most 7 characters')
      .default('clt'),
    /** Kernel command line for kernel+initrd images. */
    kernelAppend: z.string().max(1024).regex(/^[^\0\n]*$/).default('console=ttyS0 panic=-1'),
    guestAgent: z.boolean().default(true),
    /** How long a graceful stop waits for the guest to power off before QEMU is told to quit. */
    stopTimeoutMs: z.number().int().min(0).max(120_000).default(60_000),
    /** How the host's ip-discovery plugins are combined: the first that finds anything, or all merged. */
    ipDiscovery: z
      .object({
        mode: z.enum(['first', 'merge']).default('first'),
        /** Strategy plugins to ask, in order; default: every ip-discovery plugin, in config order. */
        order: z.array(z.string().min(1).max(64)).max(16).optional(),
      })
      .strict()
      .default({ mode: 'first' }),
    limits: z
      .object({
        maxVms: z.number().int().min(0).max(10_000).default(64),
        /** Memory of all VMs of this host together. */
        maxTotalMemoryMiB: z.number().int().min(64).max(16 * 1024 * 1024).default(16_384),
        maxMemoryMiB: z.number().int().min(16).max(4 * 1024 * 1024).default(8_192),
        maxVcpus: z.number().int().min(1).max(1024).default(8),
      })
      .strict()
      .default({ maxVms: 64, maxTotalMemoryMiB: 16_384, maxMemoryMiB: 8_192, maxVcpus: 8 }),
  })
  .strict()
  .superRefine((options, ctx) => {
    // Beyond the machine's own limit QEMU refuses to start ("Invalid SMP CPUs"), and create-vm would answer a
    // retryable QEMU_FAILED for a request that can never work: refused here instead, at config check.
    const most = MACHINE_MAX_CPUS[options.machine];
    if (options.limits.maxVcpus > most) {
      ctx.addIssue({ code: 'custom', path: ['limits', 'maxVcpus'], message: `at most ${most} for machine "${options.machine}" (QEMU's own limit)` });
    }
  });

/** The most vCPUs each machine type takes (QEMU 7.2: i440fx 255; q35 288, more only with newer QEMU). */
const MACHINE_MAX_CPUS = { pc: 255, q35: 288 } as const;

export type QemuOptions = z.output<typeof qemuOptionsSchema>;
