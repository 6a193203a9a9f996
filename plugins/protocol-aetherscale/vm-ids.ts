/**
 * aetherscale VM ids are 8 lowercase letters, and its clients may hold nothing else. cloudlet ids are
 * `<host>.<8 letters>`: clients see only the letters, and a host resolves letters to one of its own VMs.
 */
import { shown } from './wire.ts';

export const CLIENT_VM_ID = /^[a-z]{8}$/;
const CLOUDLET_VM_ID = /^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.([a-z]{8})$/;

export function clientVmId(cloudletId: string): string {
  return cloudletId.slice(cloudletId.lastIndexOf('.') + 1);
}

/** What a client's `vm-id` names: the letters alone, or (an extension) a full cloudlet id. */
export type VmRef = { kind: 'letters'; letters: string } | { kind: 'full'; id: string; host: string } | { kind: 'invalid'; reason: string };

export function parseVmRef(value: unknown): VmRef {
  if (typeof value !== 'string') return { kind: 'invalid', reason: `Invalid VM ID ${typeof value === 'object' && value !== null ? `(${shown(value)})` : shown(value)}: expected 8 lowercase letters` };
  if (CLIENT_VM_ID.test(value)) return { kind: 'letters', letters: value };
  const full = CLOUDLET_VM_ID.exec(value);
  if (full) return { kind: 'full', id: value, host: full[1] as string };
  return { kind: 'invalid', reason: `Invalid VM ID ${shown(value)}: expected 8 lowercase letters` };
}

/** The cloudlet id among this host's VMs that `ref` names, if any. */
export function findOwnVm(ref: Exclude<VmRef, { kind: 'invalid' }>, ownIds: readonly string[]): string | undefined {
  return ref.kind === 'full' ? ownIds.find((id) => id === ref.id) : ownIds.find((id) => clientVmId(id) === ref.letters);
}
