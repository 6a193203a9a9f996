/** `vm start|stop|restart|delete ID`: one message to the VM's host, progress while it works, optional waits. */
import { cloudletError } from '../../errors.ts';
import { ownerFromPayload } from '../../routing.ts';
import { CLIENT_FLAGS, timeoutFlag, type CliValues, type FlagName } from '../args.ts';
import { deadlineAfter, openClient, resultOf, targetFor } from '../client.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { createProgress } from '../progress.ts';
import { outcomeText, type VmView } from './vm-format.ts';
import { DEFAULT_WAIT_MS, printAfterWait, waitAfterCommand, waitForState, type WantedState } from './vm-wait.ts';

/** The one positional of commands about a VM, checked to be a VM id. */
export function vmIdArgument(positionals: string[], usage: string): string {
  const [vm, ...extra] = positionals;
  if (!vm || extra.length > 0) throw cloudletError('USAGE', `expected exactly one VM id\n${usage}`);
  if (ownerFromPayload({ vm }) === undefined) throw cloudletError('USAGE', `"${vm}" is not a VM id: the host id, ".", 8 lowercase letters, e.g. node1.kqzvbxwe ("cloudlet vm list" shows them)`);
  return vm;
}

interface ActionSpec {
  word: 'start' | 'stop' | 'restart' | 'delete';
  type: string;
  usage: string;
  flags: FlagName[];
  payload(vm: string, values: CliValues): Record<string, unknown>;
  /** What --wait confirms; --wait-ip is offered when the VM ends up running. */
  wants: WantedState;
}

const ACTIONS: ActionSpec[] = [
  {
    word: 'start',
    type: 'start-vm',
    usage: `cloudlet vm start ID [--wait] [--wait-ip] [--timeout MS] [--json]
  Starts a stopped VM (a running one is left alone and reported as already running).`,
    flags: ['wait', 'wait-ip'],
    payload: (vm) => ({ vm }),
    wants: 'running',
  },
  {
    word: 'stop',
    type: 'stop-vm',
    usage: `cloudlet vm stop ID [--force] [--wait] [--timeout MS] [--json]
  Powers the VM off through the guest (ACPI), then tells QEMU to quit if the guest does not within the host's
  stopTimeoutMs. --force quits QEMU at once.`,
    flags: ['force', 'wait'],
    payload: (vm, values) => ({ vm, ...(values.force ? { force: true } : {}) }),
    wants: 'stopped',
  },
  {
    word: 'restart',
    type: 'restart-vm',
    usage: `cloudlet vm restart ID [--hard] [--wait] [--wait-ip] [--timeout MS] [--json]
  Powers the VM off through the guest and starts it again; --hard resets the machine at once (same process).`,
    flags: ['hard', 'wait', 'wait-ip'],
    payload: (vm, values) => ({ vm, mode: values.hard ? 'hard' : 'graceful' }),
    wants: 'running',
  },
  {
    word: 'delete',
    type: 'delete-vm',
    usage: `cloudlet vm delete ID [--wait] [--timeout MS] [--json]
  Stops the VM at once and removes it with its disk. Deleting a VM that is gone says so and exits 0.`,
    flags: ['wait'],
    payload: (vm) => ({ vm }),
    wants: 'gone',
  },
];

function actionCommand(spec: ActionSpec): Command {
  const usage = `${spec.usage}
  On RabbitMQ the command goes to the host named in the VM id. --wait: then confirm the new state with the
  host (get-vm)${spec.wants === 'running' ? '; --wait-ip: then wait until the VM has an address' : ''}.`;
  return {
    words: ['vm', spec.word],
    usage,
    flags: [...CLIENT_FLAGS, ...spec.flags],
    async run({ positionals, values, output }) {
      const vm = vmIdArgument(positionals, usage);
      const payload = spec.payload(vm, values);
      const timeoutMs = timeoutFlag(values);
      const deadline = deadlineAfter(timeoutMs);
      const until = deadline ?? Date.now() + DEFAULT_WAIT_MS;
      const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
      const progress = createProgress({ title: `vm ${spec.word} ${vm}`, json: output.json });
      try {
        const reply = await client.request(spec.type, payload, { target: targetFor(client, values.host, payload), deadline, onProgress: progress.onProgress });
        if (spec.word === 'delete') {
          const result = resultOf<{ vm: string; deleted: boolean; already: boolean; stopped?: string; deletedAt?: string }>(reply);
          if (values.wait) await waitForState(client, vm, reply.host, 'gone', until, progress);
          progress.finish(result.deleted ? `✓ deleted ${vm}` : undefined);
          const gone = result.deletedAt ? `deleted already on ${reply.host}, at ${result.deletedAt}` : `no such VM on ${reply.host} (already deleted?)`;
          output.result(result.deleted ? `deleted ${vm}` : `${vm}: ${gone}`, { ok: true, host: reply.host, ...result });
          return EXIT.OK;
        }
        const waits = { state: values.wait === true, address: values['wait-ip'] === true };
        const { view, failed } = await waitAfterCommand(client, resultOf<VmView>(reply), reply.host, spec.wants, waits, until, progress);
        progress.finish(failed ? undefined : `✓ ${vm} ${outcomeText(view) ?? view.state}`);
        return printAfterWait(output, reply.host, view, failed);
      } finally {
        progress.finish();
        await client.close();
      }
    },
  };
}

export const vmActionCommands: Command[] = ACTIONS.map(actionCommand);
