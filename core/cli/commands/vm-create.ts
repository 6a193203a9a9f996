import { cloudletError } from '../../errors.ts';
import { CLIENT_FLAGS, choiceFlag, intFlag, timeoutFlag } from '../args.ts';
import { deadlineAfter, openClient, resultOf } from '../client.ts';
import type { Command } from '../command.ts';
import type { ReplyEnvelope } from '../../envelope.ts';
import { createProgress } from '../progress.ts';
import { findEarlierCreate, foundElsewhere } from './vm-create-find.ts';
import { checkSameSettings, requestIdFor, stoppedSince, withRepeatHint } from './vm-create-repeat.ts';
import type { VmView } from './vm-format.ts';
import { DEFAULT_WAIT_MS, printAfterWait, waitAfterCommand } from './vm-wait.ts';

export const vmCreateCommand: Command = {
  words: ['vm', 'create'],
  usage: `cloudlet vm create --image NAME [--memory MiB] [--vcpus N] [--name NAME] [--autostart]
             [--network bridge|user|none] [--host HOST] [--request-id ID] [--wait] [--wait-ip]
             [--timeout MS] [--json]
  Creates a VM from a base image and starts it; prints the VM once QEMU runs it. Memory defaults to 512 MiB,
  vCPUs to 1. On RabbitMQ it goes to --host, else to any host with capacity. --wait: also confirm with the
  host that QEMU reports the VM running. --wait-ip: then wait until the VM has an address (implies --wait).
  --timeout MS bounds the whole command (default: wait while the host works; 5 min for --wait/--wait-ip).
  --request-id ID: the request's id (default: a random one). The same ID again answers with the VM it
  made ("already"), so a script can repeat a create whose answer it lost. On RabbitMQ without --host, every
  host is asked first where the request ran, and the repeat goes there.`,
  flags: [...CLIENT_FLAGS, 'image', 'memory', 'vcpus', 'name', 'autostart', 'network', 'request-id', 'wait', 'wait-ip'],
  async run({ positionals, values, output }) {
    if (positionals.length > 0) throw cloudletError('USAGE', `vm create takes no positional arguments (give the image with --image), found "${positionals.join(' ')}"`);
    if (!values.image) throw cloudletError('USAGE', 'give the base image with --image NAME ("cloudlet image list" shows them)');
    const payload = {
      image: values.image,
      memory: intFlag(values, 'memory', { min: 16, max: 4 * 1024 * 1024 }, 512),
      vcpus: intFlag(values, 'vcpus', { min: 1, max: 1024 }, 1),
      ...(values.name === undefined ? {} : { name: values.name }),
      ...(values.autostart ? { autostart: true } : {}),
      ...(values.network === undefined ? {} : { network: choiceFlag(values, 'network', ['bridge', 'user', 'none'] as const) }),
    };
    const requestId = requestIdFor(values['request-id']);
    const timeoutMs = timeoutFlag(values);
    const deadline = deadlineAfter(timeoutMs);
    const until = deadline ?? Date.now() + DEFAULT_WAIT_MS;
    const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
    const progress = createProgress({ title: `vm create ${values.image}`, json: output.json });
    // The host that took the request, as its progress says (an any-host create names no host before).
    let tookIt = values.host;
    const onProgress: typeof progress.onProgress = (update) => {
      tookIt = update.host;
      progress.onProgress(update);
    };
    try {
      // A repeat without a host: to the host where the request ran, if one did, not to any host (which could
      // make a second VM). A random id is new: nothing to look for.
      let target = values.host;
      if (target === undefined && values['request-id'] !== undefined && client.routed) {
        const earlier = await findEarlierCreate(client, requestId, deadline);
        target = earlier.host;
        if (target !== undefined) {
          tookIt = target;
          const elsewhere = foundElsewhere(earlier.found, target);
          if (elsewhere) output.note(elsewhere);
        }
      }
      const reply = await client.request('create-vm', payload, { id: requestId, target, deadline, onProgress }).catch((error: unknown) => {
        throw withRepeatHint(error, requestId, client.routed ? tookIt : undefined, client.routed);
      });
      const created = resultOf<VmView>(inFlagTerms(reply, payload));
      if (values['request-id'] !== undefined) checkSameSettings(reply, created, payload, requestId);
      // A repeat of --request-id: say so, or it reads as a VM just made.
      if (created.already) output.note(created.hint ?? `${created.id} was made by request ${requestId} before: nothing was done`);
      const waits = { state: values.wait === true, address: values['wait-ip'] === true };
      const stopped = waits.state || waits.address ? stoppedSince(created) : undefined;
      const { view, failed } = stopped ? { view: created, failed: stopped } : await waitAfterCommand(client, created, reply.host, 'running', waits, until, progress);
      const done = created.already ? `✓ ${view.id} on ${reply.host}, made by this request before` : `✓ created ${view.id} on ${reply.host}`;
      progress.finish(failed ? `${done}; the wait failed` : done);
      return printAfterWait(output, reply.host, view, failed);
    } finally {
      progress.finish();
      await client.close();
    }
  },
};

/** The payload keys vm create fills from a flag of the same name. */
const FLAG_KEYS = new Set(['image', 'memory', 'vcpus', 'name', 'network']);

/**
 * The host's INVALID_PAYLOAD in the words of the command line: `--name "my vm!": letters, digits, …`. The
 * rules are the host's backend's (the CLI does not repeat them), but its message names payload paths and
 * not the value, which the person who typed the flag needs.
 */
export function inFlagTerms(reply: ReplyEnvelope, payload: Record<string, unknown>): ReplyEnvelope {
  if (reply.ok || reply.error?.code !== 'INVALID_PAYLOAD') return reply;
  const issues = (reply.error.details as { issues?: unknown } | undefined)?.issues;
  if (!Array.isArray(issues) || issues.length === 0) return reply;
  let named = false;
  const parts = (issues as { path?: unknown; message?: unknown }[]).map((issue) => {
    const key = typeof issue.path === 'string' ? issue.path.replace(/^payload\./, '') : '';
    if (!FLAG_KEYS.has(key) || !(key in payload)) return `${String(issue.path)}: ${String(issue.message)}`;
    named = true;
    return `--${key} ${JSON.stringify(payload[key])}: ${String(issue.message)}`;
  });
  if (!named) return reply;
  const details = typeof reply.error.details === 'object' && reply.error.details !== null ? reply.error.details : {};
  return {
    ...reply,
    error: { ...reply.error, message: `the host refused the request: ${parts.join('; ')}`, details: { ...details, hint: 'change the value of the flag named; "cloudlet vm create --help" lists the flags' } },
  };
}
