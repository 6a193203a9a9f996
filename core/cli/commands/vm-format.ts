/** How VMs, their addresses and per-host outcomes look in tables and `key: value` blocks. */
import { keyValues, table } from '../output.ts';

/** The fields of qemu-backend's VM view the CLI shows; the JSON output passes the whole view on. */
export interface VmView {
  id: string;
  host: string;
  name: string | null;
  image: string;
  memoryMiB: number;
  vcpus: number;
  mac: string;
  network: string;
  tap: string | null;
  autostart: boolean;
  state: string;
  desired?: string;
  pid: number | null;
  createdAt: string;
  qmpStatus?: string | null;
  addresses?: VmAddress[];
  how?: string;
  already?: boolean;
  hint?: string;
}

export interface VmAddress {
  address: string;
  family: string;
  scope: string;
  source: string;
  ageMs: number | null;
}

export function addressList(addresses: readonly VmAddress[] | undefined): string {
  return addresses && addresses.length > 0 ? addresses.map((a) => a.address).join(', ') : '-';
}

export function vmTable(vms: readonly VmView[]): string {
  return table(
    ['ID', 'NAME', 'STATE', 'IMAGE', 'MEMORY', 'VCPUS', 'ADDRESSES'],
    vms.map((vm) => [vm.id, vm.name ?? '-', vm.state, vm.image, `${vm.memoryMiB} MiB`, String(vm.vcpus), addressList(vm.addresses)]),
  );
}

/** What an action did, in words: "powered off", "already running", … */
export function outcomeText(vm: VmView): string | undefined {
  if (vm.already) return vm.state === 'running' ? 'already running' : 'already stopped';
  const how: Record<string, string> = {
    'powered-off': 'powered off by the guest',
    quit: 'QEMU quit',
    killed: 'killed (did not quit)',
    reset: 'reset (same process)',
    'power-cycled': 'powered off and started again',
    started: 'started (it was not running)',
  };
  return vm.how ? (how[vm.how] ?? vm.how) : undefined;
}

export function vmDetails(vm: VmView): string {
  const network = vm.network === 'bridge' && vm.tap ? `bridge (tap ${vm.tap})` : vm.network;
  const pairs: [string, string][] = [
    ['id', vm.id],
    ['name', vm.name ?? '-'],
    ['host', vm.host],
    ['state', vm.qmpStatus && vm.qmpStatus !== vm.state ? `${vm.state} (QEMU: ${vm.qmpStatus})` : vm.state],
    ['image', vm.image],
    ['memory', `${vm.memoryMiB} MiB`],
    ['vcpus', String(vm.vcpus)],
    ['network', network],
    ['mac', vm.mac],
    ['addresses', addressList(vm.addresses)],
    ['autostart', vm.autostart ? 'yes' : 'no'],
    ['pid', vm.pid === null ? '-' : String(vm.pid)],
    ['created', vm.createdAt],
  ];
  const outcome = outcomeText(vm);
  if (outcome) pairs.push(['result', outcome]);
  return keyValues(pairs);
}

export function addressTable(addresses: readonly VmAddress[]): string {
  return table(
    ['ADDRESS', 'FAMILY', 'SCOPE', 'SOURCE', 'AGE'],
    addresses.map((a) => [a.address, a.family, a.scope, a.source, a.ageMs === null ? '-' : `${Math.round(a.ageMs / 1000)} s`]),
  );
}
