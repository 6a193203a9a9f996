/**
 * `cloudlet sweep`: asks hosts to clean up now (`sweep-now`, handled by a sweeper plugin). The result shape is
 * the plugin's; when it lists `actions` (objects), they are shown as a table, else the result as JSON.
 */
import { cloudletError } from '../../errors.ts';
import { CLIENT_FLAGS, timeoutFlag } from '../args.ts';
import { deadlineAfter, hostOutcomes, openClient, untrustedField, whyMissing, type HostOutcome } from '../client.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { createProgress } from '../progress.ts';
import { table } from '../output.ts';

export const sweepCommand: Command = {
  words: ['sweep'],
  usage: `cloudlet sweep [--dry-run] [--host HOST] [--timeout MS] [--json]
  Asks every live host (on RabbitMQ; or --host; the local agent otherwise) to sweep now: the sweeper plugin
  removes what is left over. --dry-run reports what would be done and changes nothing. Exit 1 when a host
  failed, did not answer, or has no sweeper (UNKNOWN_TYPE).`,
  flags: [...CLIENT_FLAGS, 'dry-run'],
  async run({ positionals, values, output }) {
    if (positionals.length > 0) throw cloudletError('USAGE', `sweep takes no positional arguments, found "${positionals.join(' ')}"`);
    const dryRun = values['dry-run'] === true;
    const timeoutMs = timeoutFlag(values);
    const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
    const progress = createProgress({ title: dryRun ? 'sweep (dry run)' : 'sweep', json: output.json });
    try {
      const gathered = await client.gather('sweep-now', { dryRun }, { target: values.host, deadline: deadlineAfter(timeoutMs), onProgress: progress.onProgress });
      progress.finish();
      const hosts = hostOutcomes<unknown>(gathered);
      const ok = hosts.every((h) => h.ok) && gathered.missing.length === 0;
      const human = [...hosts.map(describe), ...gathered.missing.map((host) => `${host}: ${whyMissing(gathered, host)}`)].join('\n\n');
      output.result(human || 'no host answered', { ok, dryRun, hosts, missing: gathered.missing, ...untrustedField(gathered) });
      return ok ? EXIT.OK : EXIT.ERROR_REPLY;
    } finally {
      progress.finish();
      await client.close();
    }
  },
};

function describe(outcome: HostOutcome<unknown>): string {
  if (!outcome.ok) return `${outcome.host}: error [${outcome.error?.code}] ${outcome.error?.message}`;
  const actions = (outcome.result as { actions?: unknown } | undefined)?.actions;
  if (Array.isArray(actions) && actions.every((a) => typeof a === 'object' && a !== null && !Array.isArray(a))) {
    if (actions.length === 0) return `${outcome.host}: nothing to do`;
    const columns = [...new Set(actions.flatMap((a) => Object.keys(a as object)))];
    const cell = (value: unknown) => (value === undefined ? '' : typeof value === 'string' ? value : JSON.stringify(value));
    return `${outcome.host}:\n${table(columns.map((c) => c.toUpperCase()), actions.map((a) => columns.map((c) => cell((a as Record<string, unknown>)[c]))))}`;
  }
  return `${outcome.host}: ${JSON.stringify(outcome.result, null, 2)}`;
}
