/**
 * `--wait` and `--wait-ip`: after a VM command was answered, watch the VM on its host until it is in the
 * state asked for (get-vm), and until it has an address (get-vm-ip, which waits on the host's ip-discovery
 * plugins' change notifications rather than polling).
 */
import { CloudletError, cloudletError } from '../../errors.ts';
import { ErrorReply, resultOf, type CliClient } from '../client.ts';
import { EXIT, exitCodeFor, exitCodeForReply } from '../exit-codes.ts';
import type { Output } from '../output.ts';
import type { Progress } from '../progress.ts';
import { vmDetails, type VmAddress, type VmView } from './vm-format.ts';

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

/** A --wait or --wait-ip that failed after its command succeeded: which wait, and why. */
export interface WaitFailure {
  for: 'state' | 'address';
  error: CloudletError;
  /** The host that answered with the error, when it was a host's reply. */
  host?: string;
}

/**
 * --wait (the state `want`) and --wait-ip (an address) after a VM command that succeeded. A failed wait
 * never hides the command's result: a create-vm that succeeded made a VM, and its id must reach the caller
 * (before, the wait's error replaced it, and a script saw only "ok": false, retryable, and created another).
 */
export async function waitAfterCommand(
  client: CliClient,
  view: VmView,
  host: string,
  want: WantedState,
  waits: { state: boolean; address: boolean },
  until: number,
  progress: Progress,
): Promise<{ view: VmView; failed?: WaitFailure }> {
  let current = view;
  const failure = (what: WaitFailure['for'], thrown: unknown): WaitFailure => {
    if (thrown instanceof ErrorReply) return { for: what, error: thrown.error, host: thrown.host };
    if (thrown instanceof CloudletError) return { for: what, error: thrown };
    throw thrown;
  };
  if (waits.state || waits.address) {
    try {
      current = { ...current, ...(await waitForState(client, view.id, host, want, until, progress)) };
    } catch (thrown) {
      return { view: current, failed: failure('state', thrown) };
    }
  }
  if (waits.address) {
    try {
      current = { ...current, addresses: await waitForAddress(client, view.id, host, until, progress) };
    } catch (thrown) {
      return { view: current, failed: failure('address', thrown) };
    }
  }
  return { view: current };
}

/**
 * Prints the VM, then a failed wait's error (stderr; in the JSON as `wait`). The exit code is the wait's:
 * 5 when it ran out of time, else 1, as for `call --wait-ip`.
 */
export function printAfterWait(output: Output, host: string, view: VmView, failed: WaitFailure | undefined): number {
  output.result(vmDetails(view), { ok: true, host, vm: view, ...(failed ? { wait: { ok: false, for: failed.for, ...(failed.host ? { host: failed.host } : {}), error: failed.error.toWire() } } : {}) });
  if (!failed) return EXIT.OK;
  if (!output.json) output.error(failed.error, failed.host);
  return failed.host === undefined ? exitCodeFor(failed.error) : exitCodeForReply(failed.error);
}
