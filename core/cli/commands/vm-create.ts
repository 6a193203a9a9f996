import { cloudletError } from '../../errors.ts';
import { messageIdSchema } from '../../envelope.ts';
import { CLIENT_FLAGS, choiceFlag, intFlag, timeoutFlag } from '../args.ts';
import { deadlineAfter, openClient, resultOf } from '../client.ts';
import type { Command } from '../command.ts';
import { createProgress } from '../progress.ts';
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
  --request-id ID: the request's id (default: a random one). The same ID again on the same host answers
  with the VM it made ("already"), so a script can repeat a create whose answer it lost; give --host too,
  or the repeat may reach another host.`,
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
    const requestId = requestIdFlag(values['request-id']);
    const timeoutMs = timeoutFlag(values);
    const deadline = deadlineAfter(timeoutMs);
    const until = deadline ?? Date.now() + DEFAULT_WAIT_MS;
    const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
    const progress = createProgress({ title: `vm create ${values.image}`, json: output.json });
    try {
      const reply = await client.request('create-vm', payload, { id: requestId, target: values.host, deadline, onProgress: progress.onProgress });
      const created = resultOf<VmView>(reply);
      // A repeat of --request-id: say so, or it reads as a VM just made.
      if (created.already) output.note(created.hint ?? `${created.id} was made by this request before: nothing was done`);
      const waits = { state: values.wait === true, address: values['wait-ip'] === true };
      const { view, failed } = await waitAfterCommand(client, created, reply.host, 'running', waits, until, progress);
      progress.finish(failed ? `✓ created ${view.id} on ${reply.host}; the wait failed` : `✓ created ${view.id} on ${reply.host}`);
      return printAfterWait(output, reply.host, view, failed);
    } finally {
      progress.finish();
      await client.close();
    }
  },
};

/** `--request-id`: checked here as the envelope checks an id, so a bad one is a USAGE error, not BAD_ENVELOPE. */
function requestIdFlag(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (messageIdSchema.safeParse(raw).success) return raw;
  throw cloudletError('USAGE', `--request-id must be 1–128 printable ASCII characters without spaces, found ${JSON.stringify(raw)}`);
}
