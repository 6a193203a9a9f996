/**
 * `--wait` and `--wait-ip`: after a VM command was answered, watch the VM on its host until it is in the
 * state asked for (get-vm), and until it has an address (get-vm-ip, which waits on the host's ip-discovery
 * plugins' change notifications rather than polling).
 */
import { CloudletError, cloudletError } from '../../errors.ts';
import { resultOf, type CliClient } from '../client.ts';
import type { Progress } from '../progress.ts';
import type { VmAddress, VmView } from './vm-format.ts';

/** Without --timeout, waiting for a state or an address gives up after this long. */
export const DEFAULT_WAIT_MS = 300_000;
const POLL_MS = 500;

export type WantedState = 'running' | 'stopped' | 'gone';

/** Polls get-vm until the VM is `want` (QEMU's own status for running); returns its last view (undefined once gone). */
export async function waitForState(client: CliClient, vm: string, host: string, want: WantedState, until: number, progress: Progress): Promise<VmView | undefined> {
  progress.stage(want === 'gone' ? 'confirming deletion' : `confirming ${want}`, host);
  let last = 'unknown';
  for (;;) {
    const reply = await client.request('get-vm', { vm }, { target: host, deadline: Math.max(until, Date.now() + 5_000) });
    if (!reply.ok && reply.error?.code === 'VM_NOT_FOUND') {
      if (want === 'gone') return undefined;
      throw CloudletError.fromWire(reply.error);
    }
    const view = resultOf<VmView>(reply);
    last = view.qmpStatus ?? view.state;
    const reached = want === 'running' ? view.state === 'running' && (view.qmpStatus ?? 'running') === 'running' : want === 'stopped' && view.state === 'stopped';
    if (reached) return view;
    if (Date.now() + POLL_MS > until) {
      throw cloudletError('CLIENT_TIMEOUT', `${vm} did not become ${want} in time (last seen: ${last})`, { vm, want, last });
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Asks the VM's host for an address, waiting up to `until`; shows the address as the last stage. */
export async function waitForAddress(client: CliClient, vm: string, host: string, until: number, progress: Progress): Promise<VmAddress[]> {
  const timeoutMs = Math.min(600_000, Math.max(0, until - Date.now()));
  const reply = await client.request('get-vm-ip', { vm, wait: true, timeoutMs }, { target: host, onProgress: progress.onProgress });
  const { addresses } = resultOf<{ addresses: VmAddress[] }>(reply);
  progress.stage(addresses.map((a) => a.address).join(', ') || 'no address', host);
  return addresses;
}
