/**
 * sweeper: each host regularly reconciles what it runs with what it knows, so crashes and manual meddling
 * leave no garbage. Two jobs on node-cron schedules, each with an action (`log`, `stop` or `reap`):
 * - leases: dnsmasq leases and bridge neighbour entries of MACs that belong to no VM of this host;
 * - orphans: QEMU processes with this host's naming but no record, records whose QEMU is gone, VM folders
 *   without a record, half-written records, and taps that belong to no VM.
 * Only what carries this host's id and naming is ever touched; see docs/SWEEPER.md.
 */
import { definePlugin, type HostIdentity } from '../../core/plugin-api.ts';
import { sweeperErrors } from './errors.ts';
import { qemuContradictions, resolveSweeperOptions, sweeperOptionsSchema } from './options.ts';
import { sweepNowPayload } from './schemas.ts';
import { SweeperService } from './service.ts';

/** The running sweeper of each agent (hooks get a fresh context per call; the host identity is the agent's). */
const services = new WeakMap<HostIdentity, SweeperService>();

export default definePlugin({
  name: 'sweeper',
  version: '1.0.0',
  // ctx.dispatch (core API 1.4): dead records are settled through qemu-backend's own messages;
  // ctx.dependencyOptions (1.6): qemu-backend's folders and names, not repeated in the sweeper's options;
  // checkOptions (1.8): a qemu block that contradicts them is a config problem, not a failed start.
  api: '^1.8.0',
  description: 'Periodic clean-up of stale leases, orphaned QEMU processes, records, VM folders and taps.',
  dependencies: { 'qemu-backend': '^1.0.0' },
  options: sweeperOptionsSchema,
  errors: sweeperErrors,
  messages: {
    'sweep-now': {
      payload: sweepNowPayload,
      handler: new URL('./handlers/sweep-now.ts', import.meta.url),
      description: 'Sweep now (after any sweep in progress); `dryRun` lists what would be done.',
      // The handler only waits for the main thread; a graceful power-off of an orphan may take stopTimeoutMs.
      pool: { minThreads: 0, maxThreads: 2, maxQueue: 16, timeoutMs: 900_000 },
    },
  },
  checkOptions: (options, { dependencyOptions }) => qemuContradictions(options, dependencyOptions['qemu-backend']),
  hooks: {
    start(ctx) {
      const options = resolveSweeperOptions(ctx.options, ctx.dependencyOptions['qemu-backend']);
      const service = new SweeperService({ options, host: ctx.host, log: ctx.log, emitEvent: ctx.emitEvent, dispatch: (type, payload) => ctx.dispatch(type, payload) });
      service.start();
      services.set(ctx.host, service);
    },
    async stop(ctx) {
      const service = services.get(ctx.host);
      services.delete(ctx.host);
      await service?.stop();
    },
  },
});
