/** The sweeper's options, as a host config gives them (`plugins: [{ use: sweeper, options: … }]`). */
import cron from 'node-cron';
import { z } from '../../core/plugin-api.ts';
import { MANAGED_LEASE_DIR } from '../ip-discovery-dnsmasq/options.ts';

export const ACTIONS = ['log', 'stop', 'reap'] as const;
export type SweepAction = (typeof ACTIONS)[number];

export const JOB_NAMES = ['leases', 'orphans'] as const;
export type JobName = (typeof JOB_NAMES)[number];

/** What each job can find. The orphans job finds the first five, the leases job the last two. */
export const FINDING_KINDS = ['orphan-process', 'dead-record', 'orphan-folder', 'stray-file', 'orphan-tap', 'stale-lease', 'stale-neighbour'] as const;
export type FindingKind = (typeof FINDING_KINDS)[number];

const action = z.enum(ACTIONS);

const CRON_FORM = '"minute hour day-of-month month day-of-week", optionally with seconds first (e.g. "*/15 * * * *")';

const cronExpression = z
  .string()
  .min(1)
  .max(120)
  .superRefine((expression, ctx) => {
    if (cron.validate(expression)) return;
    const reason = cronSyntaxProblem(expression);
    ctx.addIssue({ code: 'custom', message: `not a cron expression node-cron accepts${reason ? ` (${reason})` : ''}: ${CRON_FORM}` });
  });

/** node-cron's own words for what is wrong with an expression validate() refused ("25 is not valid for hour"). */
function cronSyntaxProblem(expression: string): string | undefined {
  let task: ReturnType<typeof cron.createTask> | undefined;
  try {
    task = cron.createTask(expression, () => undefined);
    return undefined;
  } catch (error) {
    return (error as Error).message.replace(/ is a invalid expression for /, ' is not valid for ');
  } finally {
    void task?.destroy();
  }
}

const absolutePath = z
  .string()
  .min(2)
  .max(255)
  .regex(/^\/[^,\0\n]*[^/,\0\n]$/, 'an absolute path without "," or a trailing "/"');

const interfaceName = z
  .string()
  .min(1)
  .max(15)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'a network interface name: letters, digits, "_", ".", "-", at most 15 characters');

const program = z.string().min(1).max(200).regex(/^[^\s\0]+$/, 'a program name or path without spaces');

const macPrefix = z
  .string()
  .regex(/^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){0,5}:?$/, 'the start of a MAC address in colon-separated hex, e.g. "02:"')
  .transform((prefix) => prefix.toLowerCase());

const timezone = z.string().refine((zone) => {
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}, 'an IANA time zone such as "UTC" or "Europe/Berlin"');

/**
 * Where qemu-backend keeps its VMs on this host. Normally left out: the sweeper then takes these from
 * qemu-backend's own options (core API 1.6 `dependencyOptions`). Given, they must equal qemu-backend's.
 */
/**
 * The sweeper's optional `qemu` block. No defaults here: a key left out follows qemu-backend (or the
 * defaults below without it), and only the keys an operator wrote are compared with qemu-backend's.
 */
const qemuSchema = z
  .object({
    stateDir: absolutePath.optional(),
    tapPrefix: z
      .string()
      .regex(/^[a-z][a-z0-9]{0,6}$/, 'lowercase letters and digits, starting with a letter, at most 7 characters')
      .optional(),
    qemuBinary: program.optional(),
    ipBinary: program.optional(),
  })
  .strict();

const leasesJobSchema = z
  .object({
    schedule: cronExpression.default('*/15 * * * *'),
    action: action.default('log'),
    /** The VM bridge dnsmasq serves: releases are sent from it and its neighbour table is cleaned. */
    interface: interfaceName,
    /** dnsmasq's lease file; defaults to the managed mode's file for `interface`. */
    leaseFile: absolutePath.optional(),
    /** Only leases and neighbour entries of MACs starting so are ever touched; qemu-backend makes every MAC 02:…. */
    macPrefixes: z.array(macPrefix).min(1).max(16).default(['02:']),
    /** Remove neighbour entries of MACs that belong to no VM (PERMANENT and NOARP entries are never touched). */
    neighbours: z.boolean().default(true),
    releaseBinary: program.default('dhcp_release'),
    release6Binary: program.default('dhcp_release6'),
  })
  .strict()
  .transform((job) => ({ ...job, leaseFile: job.leaseFile ?? `${MANAGED_LEASE_DIR}/${job.interface}.leases` }));

const kindOverrides = z
  .object({
    'orphan-process': action.optional(),
    'dead-record': action.optional(),
    'orphan-folder': action.optional(),
    'stray-file': action.optional(),
    'orphan-tap': action.optional(),
  })
  .strict();

const orphansJobSchema = z
  .object({
    schedule: cronExpression.default('*/10 * * * *'),
    action: action.default('log'),
    /** A different action for some kinds, e.g. `{ orphan-folder: log }` to reap processes but keep disks. */
    kinds: kindOverrides.default({}),
    /** `stop` of an orphan QEMU: how long the guest may take to power off before QEMU is told to quit. */
    stopTimeoutMs: z.number().int().min(0).max(3_600_000).default(60_000),
  })
  .strict();

const DEFAULT_ORPHANS = { schedule: '*/10 * * * *', action: 'log', kinds: {}, stopTimeoutMs: 60_000 } as const;

/**
 * Why `expression` never comes round in `timezone` (the host's when undefined), or undefined when it does.
 * node-cron's validate() passes expressions that can never fire (a 5th Monday in every month, 30 February,
 * a time inside a daylight-saving gap); only scheduling finds out, at the agent's start. So the check
 * schedules it for a moment, as the agent will, and lets go of it.
 */
function neverComesRound(expression: string, timezone: string | undefined): string | undefined {
  let task: ReturnType<typeof cron.createTask> | undefined;
  try {
    task = cron.createTask(expression, () => undefined, timezone ? { timezone } : {});
    void task.start();
    return undefined;
  } catch (error) {
    return (error as Error).message;
  } finally {
    void task?.destroy();
  }
}

export const sweeperOptionsSchema = z
  .object({
    qemu: qemuSchema.optional(),
    /** A scheduled run starts up to this much later, at random, so hosts sharing a schedule do not sweep together. */
    jitterMs: z.number().int().min(0).max(3_600_000).default(30_000),
    /** The zone schedules are read in; default the host's. */
    timezone: timezone.optional(),
    /**
     * Anything younger than this is left alone: a VM being created or deleted passes through states that look
     * like leftovers (a record without a process, a folder without a record) for up to create-vm's timeout.
     */
    minAgeMs: z.number().int().min(0).max(7 * 86_400_000).default(300_000),
    /** Without `jobs`, the orphans job runs in `log` mode every 10 minutes. */
    jobs: z
      .object({ leases: leasesJobSchema.optional(), orphans: orphansJobSchema.optional() })
      .strict()
      .default({ orphans: { ...DEFAULT_ORPHANS } }),
  })
  .strict()
  .superRefine((options, ctx) => {
    for (const [job, settings] of Object.entries(options.jobs)) {
      // A schedule that is not cron at all was reported by its own check; this one is for those that are.
      const reason = settings && cron.validate(settings.schedule) && neverComesRound(settings.schedule, options.timezone);
      if (!reason) continue;
      const zone = options.timezone ?? 'the host\'s time zone';
      ctx.addIssue({
        code: 'custom',
        path: ['jobs', job, 'schedule'],
        message: `"${settings.schedule}" never comes round in ${zone} (node-cron: ${reason}); e.g. a 5th weekday that not every month has, a day some month lacks, or a time in a daylight-saving gap`,
      });
    }
  });

/** The options as configured; `qemu` may be left out. */
export type SweeperConfig = z.output<typeof sweeperOptionsSchema>;
export type QemuView = Required<z.output<typeof qemuSchema>>;
/** The options the sweeper works with: `qemu` resolved (resolveSweeperOptions). */
export type SweeperOptions = Omit<SweeperConfig, 'qemu'> & { qemu: QemuView };

/** qemu-backend's own defaults for these four. */
const QEMU_DEFAULTS: QemuView = { stateDir: '/var/lib/cloudlet/qemu', tapPrefix: 'clt', qemuBinary: 'qemu-system-x86_64', ipBinary: 'ip' };
const QEMU_KEYS = ['stateDir', 'tapPrefix', 'qemuBinary', 'ipBinary'] as const;

/** What to do about a contradicting `qemu` block, for `checkOptions` and the error below. */
const LEAVE_OUT = 'leave out the sweeper\'s "qemu" block (it follows qemu-backend), or give the same value';

/** The keys of a `qemu` block that differ from qemu-backend's own options, one problem each. */
export function qemuContradictions(config: SweeperConfig, qemuBackendOptions?: unknown): { path: string; message: string; allowed: string }[] {
  const backend = backendView(qemuBackendOptions);
  const given = config.qemu ?? {};
  return QEMU_KEYS.filter((key) => given[key] !== undefined && backend[key] !== undefined && backend[key] !== given[key]).map((key) => ({
    path: `qemu.${key}`,
    message: `qemu.${key} is "${given[key]}" but qemu-backend's ${key} is "${backend[key]}"`,
    allowed: LEAVE_OUT,
  }));
}

function backendView(qemuBackendOptions?: unknown): Partial<QemuView> {
  const backend = qemuBackendOptions as Partial<Record<(typeof QEMU_KEYS)[number], unknown>> | undefined;
  const view: Partial<QemuView> = {};
  for (const key of QEMU_KEYS) if (typeof backend?.[key] === 'string') view[key] = backend[key] as string;
  return view;
}

/**
 * Fills in `qemu` from qemu-backend's validated options (its `stateDir`, `tapPrefix`, `qemuBinary` and
 * `ipBinary`), so operators set them once. A `qemu` block that contradicts qemu-backend is refused: a sweeper
 * looking at another folder than qemu-backend writes finds nothing, or the wrong things. (The load-time
 * check, `checkOptions`, reports it first; this keeps the sweeper from ever running with it.)
 */
export function resolveSweeperOptions(config: SweeperConfig, qemuBackendOptions?: unknown): SweeperOptions {
  const contradictions = qemuContradictions(config, qemuBackendOptions);
  if (contradictions.length > 0) {
    throw Object.assign(
      new Error(`sweeper options contradict qemu-backend: ${contradictions.map((c) => c.message).join('; ')}. Leave out the sweeper's "qemu" block (it follows qemu-backend), or give the same values.`),
      { code: 'PLUGIN_OPTIONS_INVALID' },
    );
  }
  return { ...config, qemu: { ...QEMU_DEFAULTS, ...backendView(qemuBackendOptions), ...config.qemu } };
}
export type LeasesJob = NonNullable<SweeperOptions['jobs']['leases']>;
export type OrphansJob = NonNullable<SweeperOptions['jobs']['orphans']>;

/** The action a finding gets: the job's, or the kind's override (orphans job). */
export function actionFor(options: SweeperOptions, kind: FindingKind): SweepAction {
  const { leases, orphans } = options.jobs;
  if (kind === 'stale-lease' || kind === 'stale-neighbour') return leases?.action ?? 'log';
  return orphans?.kinds[kind] ?? orphans?.action ?? 'log';
}

export function configuredJobs(options: SweeperOptions): JobName[] {
  return JOB_NAMES.filter((name) => options.jobs[name] !== undefined);
}
