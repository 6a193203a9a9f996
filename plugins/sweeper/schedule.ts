/**
 * The jobs' schedules, in the agent's main thread, with node-cron: `noOverlap` (a job whose previous run has
 * not finished skips its turn) and `maxRandomDelay` (each run starts up to `jitterMs` late, at random, so hosts
 * with the same schedule do not all sweep in the same second).
 */
import cron, { type Logger as CronLogger, type ScheduledTask } from 'node-cron';
import type { PluginLogger } from '../../core/plugin-api.ts';
import { configuredJobs, type JobName, type SweeperOptions } from './options.ts';

/** Schedules every configured job; if one cannot be scheduled, lets go of those already made, then throws. */
export function scheduleJobs(options: SweeperOptions, hostId: string, log: PluginLogger, runJob: (job: JobName) => Promise<void>): ScheduledTask[] {
  const tasks: ScheduledTask[] = [];
  try {
    for (const job of configuredJobs(options)) {
      tasks.push(
        cron.schedule(options.jobs[job]!.schedule, () => runJob(job), {
          name: `sweeper-${hostId}-${job}`,
          noOverlap: true,
          maxRandomDelay: options.jitterMs,
          ...(options.timezone ? { timezone: options.timezone } : {}),
          logger: cronLogger(log, job),
        }),
      );
    }
  } catch (error) {
    for (const task of tasks) void task.destroy();
    throw error;
  }
  return tasks;
}

/** node-cron's own messages (missed runs, overlaps) go to the plugin's logger, not the console. */
function cronLogger(log: PluginLogger, job: JobName): CronLogger {
  const text = (message: string | Error) => (typeof message === 'string' ? message : message.message);
  return {
    info: (message) => log.debug({ source: 'node-cron', job }, message),
    // e.g. a run still going at the job's next time: that turn is skipped (noOverlap).
    warn: (message) => log.warn({ source: 'node-cron', job }, message),
    error: (message, err) => log.error({ source: 'node-cron', job, err: err ?? message }, text(message)),
    debug: (message) => log.debug({ source: 'node-cron', job }, text(message)),
  };
}

export async function stopSchedules(tasks: readonly ScheduledTask[]): Promise<void> {
  await Promise.all(tasks.map((task) => task.destroy()));
}
