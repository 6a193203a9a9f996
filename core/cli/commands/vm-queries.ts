/** `vm list`, `vm show`, `vm ip`, `vm console-log`: read-only questions about VMs. */
import { cloudletError } from '../../errors.ts';
import { CLIENT_FLAGS, intFlag, timeoutFlag } from '../args.ts';
import { deadlineAfter, hostOutcomes, openClient, resultOf, targetFor, noteDownHosts, untrustedField, whyMissing } from '../client.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { createProgress } from '../progress.ts';
import { addressTable, vmDetails, vmTable, type VmAddress, type VmView } from './vm-format.ts';
import { vmIdArgument } from './vm-actions.ts';
import { DEFAULT_WAIT_MS } from './vm-wait.ts';

/** A host that answers UNKNOWN_TYPE simply has no VM backend: not a failure of the listing. */
const NO_BACKEND = 'UNKNOWN_TYPE';

export const vmListCommand: Command = {
  words: ['vm', 'list'],
  usage: `cloudlet vm list [--host HOST] [--timeout MS] [--json]
  Lists VMs with their state, image, size and addresses. On RabbitMQ every live host answers (or only --host);
  hosts that did not answer are named, and the exit code is then 1. Hosts known to be down are named in a
  warning (their VMs may still run); the exit code stays 0.`,
  flags: [...CLIENT_FLAGS],
  async run({ positionals, values, output }) {
    if (positionals.length > 0) throw cloudletError('USAGE', `vm list takes no positional arguments, found "${positionals.join(' ')}"`);
    const timeoutMs = timeoutFlag(values);
    const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
    try {
      const gathered = await client.gather('list-vms', {}, { target: values.host, deadline: deadlineAfter(timeoutMs ?? 30_000) });
      const hosts = hostOutcomes<{ vms: VmView[] }>(gathered);
      const vms = hosts.flatMap((h) => h.result?.vms ?? []).sort((a, b) => a.host.localeCompare(b.host) || a.createdAt.localeCompare(b.createdAt));
      const failed = hosts.filter((h) => !h.ok && h.error?.code !== NO_BACKEND);
      for (const h of failed) output.note(`warning: ${h.host} answered [${h.error?.code}] ${h.error?.message}`);
      for (const host of gathered.missing) output.note(`warning: ${host} ${whyMissing(gathered, host)}`);
      const down = noteDownHosts(gathered, output, 'VMs');
      // VMs whose vm.json the host cannot use (qemu-backend's `unusable`): not in the list, but not to be missed.
      const unusable = hosts.flatMap((h) => ((h.result as { unusable?: { vm: string; file: string; problem: string }[] } | undefined)?.unusable ?? []).map((u) => ({ host: h.host, ...u })));
      for (const u of unusable) output.note(`warning: ${u.host}: VM ${u.vm} is not listed: its record ${u.file} cannot be used (${u.problem}); "cloudlet vm delete ${u.vm}" removes it`);
      const ok = failed.length === 0 && gathered.missing.length === 0;
      output.result(vms.length === 0 ? 'no VMs' : vmTable(vms), {
        ok,
        vms,
        hosts: hosts.map((h) => (h.ok ? { host: h.host, ok: true, vms: h.result?.vms.length ?? 0 } : { host: h.host, ok: false, error: h.error })),
        missing: gathered.missing,
        ...down,
        ...untrustedField(gathered),
        ...(unusable.length > 0 && { unusable }),
      });
      return ok ? EXIT.OK : EXIT.ERROR_REPLY;
    } finally {
      await client.close();
    }
  },
};

export const vmShowCommand: Command = {
  words: ['vm', 'show'],
  usage: `cloudlet vm show ID [--json]
  Shows one VM: state as QEMU reports it, image, size, network, MAC, addresses, pid.`,
  flags: [...CLIENT_FLAGS],
  async run({ positionals, values, output }) {
    const vm = vmIdArgument(positionals, vmShowCommand.usage);
    const client = await openClient(values);
    try {
      const reply = await client.request('get-vm', { vm }, { target: targetFor(client, values.host, { vm }), deadline: deadlineAfter(timeoutFlag(values)) });
      const view = resultOf<VmView>(reply);
      output.result(vmDetails(view), { ok: true, host: reply.host, vm: view });
      return EXIT.OK;
    } finally {
      await client.close();
    }
  },
};

export const vmIpCommand: Command = {
  words: ['vm', 'ip'],
  usage: `cloudlet vm ip ID [--wait] [--timeout MS] [--json]
  The VM's addresses, from the host's ip-discovery plugins. --wait waits until one is known (up to --timeout,
  default 5 min, at most 10 min) and fails with IP_NOT_FOUND, exit 5, when none is.`,
  flags: [...CLIENT_FLAGS, 'wait'],
  async run({ positionals, values, output }) {
    const vm = vmIdArgument(positionals, vmIpCommand.usage);
    const waitMs = Math.min(600_000, timeoutFlag(values) ?? DEFAULT_WAIT_MS);
    const client = await openClient(values);
    const progress = createProgress({ title: `vm ip ${vm}`, json: output.json || !values.wait });
    try {
      const payload = { vm, wait: values.wait === true, timeoutMs: values.wait ? waitMs : 0 };
      const reply = await client.request('get-vm-ip', payload, { target: targetFor(client, values.host, payload), onProgress: progress.onProgress });
      const result = resultOf<{ vm: string; mac?: string; addresses: VmAddress[]; strategies: string[]; hint?: string }>(reply);
      progress.finish();
      const human =
        result.addresses.length > 0
          ? addressTable(result.addresses)
          : noAddressLine(vm, result);
      output.result(human, { ok: true, host: reply.host, ...result });
      return EXIT.OK;
    } finally {
      progress.finish();
      await client.close();
    }
  },
};

/** The handler asks no plugin when the VM is not running or the host has none; its hint then says which. */
function noAddressLine(vm: string, result: { strategies: string[]; hint?: string }): string {
  if (result.strategies.length === 0) return `no address known for ${vm}: ${result.hint ?? 'no ip-discovery plugin was asked'}`;
  return `no address known for ${vm} yet (asked: ${result.strategies.join(', ')})${result.hint ? `; ${result.hint}` : ''}`;
}

export const vmConsoleLogCommand: Command = {
  words: ['vm', 'console-log'],
  usage: `cloudlet vm console-log ID [--lines N] [--bytes N] [--json]
  The end of the VM's serial console log: the last --lines lines (default 100, at most 10000) within the last
  --bytes bytes (default 65536, at most 524288).`,
  flags: [...CLIENT_FLAGS, 'lines', 'bytes'],
  async run({ positionals, values, output }) {
    const vm = vmIdArgument(positionals, vmConsoleLogCommand.usage);
    const payload = { vm, lines: intFlag(values, 'lines', { min: 1, max: 10_000 }, 100), maxBytes: intFlag(values, 'bytes', { min: 1, max: 524_288 }, 65_536) };
    const client = await openClient(values);
    try {
      const reply = await client.request('get-console-log', payload, { target: targetFor(client, values.host, payload), deadline: deadlineAfter(timeoutFlag(values)) });
      const result = resultOf<{ vm: string; text: string; lines: number; bytes: number; fileBytes: number; truncated: boolean }>(reply);
      if (result.truncated) output.note(`(the last ${result.lines} line(s), ${result.bytes} of ${result.fileBytes} bytes)`);
      output.result(result.text, { ok: true, host: reply.host, ...result }, { colours: true });
      return EXIT.OK;
    } finally {
      await client.close();
    }
  },
};
