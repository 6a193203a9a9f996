/** Error codes of the sweeper (declared in index.ts; rows belong in docs/ERRORS.md). */
import { CloudletError } from '../../core/plugin-api.ts';

export const sweeperErrors = {
  SWEEPER_NOT_RUNNING: {
    message: "the sweeper is not running in this agent's main thread (its start hook has not run, or the agent is stopping)",
    retryable: true,
  },
  SWEEP_JOB_NOT_CONFIGURED: { message: 'sweep-now names a job this host does not configure', retryable: false },
  SWEEP_INVENTORY_FAILED: {
    message: 'a sweep job could not read what it needs (state folder, process table, links, lease file or neighbour table)',
    retryable: true,
  },
  SWEEP_ACTION_FAILED: { message: 'a sweep step did not complete', retryable: true },
} as const;

export type SweeperErrorCode = keyof typeof sweeperErrors;

export function sweeperError(code: SweeperErrorCode, message: string, details?: unknown, cause?: unknown): CloudletError {
  return new CloudletError(code, message, { details, cause, retryable: sweeperErrors[code].retryable });
}
