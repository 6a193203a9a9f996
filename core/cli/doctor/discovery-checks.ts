/** What the ip-discovery plugins need: dnsmasq and its lease file, the neighbour table's bridge, the guest agent. */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { QemuOptions } from '../../../plugins/qemu-backend/options.ts';
import { writableFolderCheck } from './core-checks.ts';
import { fail, ok, warn, type CheckResult } from './check.ts';
import { bridgeCheck, programCheck } from './qemu-checks.ts';

/** The options doctor reads, as the plugins' own schemas parse them (options.ts of ip-discovery-dnsmasq and ip-discovery-arp). */
export interface DnsmasqOptions {
  leaseFile: string;
  managed?: { bridge: string; dnsmasqBinary: string };
}

export interface ArpOptions {
  bridge?: string;
  ipBinary: string;
}

export async function dnsmasqChecks(options: DnsmasqOptions): Promise<CheckResult[]> {
  const plugin = 'ip-discovery-dnsmasq';
  if (options.managed) {
    const { managed } = options;
    return [
      await programCheck('dnsmasq', managed.dnsmasqBinary, ['--version'], 'managed.dnsmasqBinary', 'apt-get install dnsmasq-base', plugin),
      await bridgeCheck('dnsmasq-bridge', plugin, managed.bridge, 'managed.bridge'),
      await writableFolderCheck('lease-file', plugin, dirname(options.leaseFile), 'the lease file folder'),
    ];
  }
  const info = await stat(options.leaseFile).catch((error: NodeJS.ErrnoException) => error);
  if (info instanceof Error) {
    return [
      fail(
        'lease-file',
        plugin,
        `the lease file ${options.leaseFile} ${info.code === 'ENOENT' ? 'does not exist' : `cannot be read (${info.code})`}: is dnsmasq running on the VM bridge?`,
        `run dnsmasq on the VM bridge with --dhcp-leasefile=${options.leaseFile} (or set leaseFile to the file it writes), or let the plugin run it: options.managed`,
      ),
    ];
  }
  const readable = await access(options.leaseFile, constants.R_OK).then(
    () => true,
    () => false,
  );
  return [
    readable
      ? ok('lease-file', plugin, `the lease file ${options.leaseFile} is readable (${info.size} bytes, changed ${new Date(info.mtimeMs).toISOString()})`)
      : fail('lease-file', plugin, `the lease file ${options.leaseFile} is not readable by this user`, `give the agent's user read access to ${options.leaseFile}`),
  ];
}

export async function arpChecks(options: ArpOptions, qemu: QemuOptions | undefined): Promise<CheckResult[]> {
  const plugin = 'ip-discovery-arp';
  const bridge = options.bridge ?? (qemu?.network.mode === 'bridge' ? qemu.network.bridge : undefined);
  return [
    await programCheck('arp-ip', options.ipBinary, ['-V'], 'ipBinary', 'apt-get install iproute2', plugin),
    bridge
      ? await bridgeCheck('arp-bridge', plugin, bridge, options.bridge ? 'bridge' : '(qemu-backend network.bridge)')
      : warn('arp-bridge', plugin, 'no bridge to read neighbours on: qemu-backend does not use a bridge and the plugin names none', 'set ip-discovery-arp options.bridge, or qemu-backend network.mode: bridge'),
  ];
}

export function guestAgentChecks(qemu: QemuOptions | undefined): CheckResult[] {
  const plugin = 'ip-discovery-guest-agent';
  if (qemu && !qemu.guestAgent) {
    return [warn('guest-agent', plugin, 'qemu-backend guestAgent is false: VMs get no guest-agent channel, so this plugin finds nothing', 'set qemu-backend options.guestAgent: true (the default)')];
  }
  return [ok('guest-agent', plugin, 'VMs get a guest-agent channel; guests need qemu-guest-agent installed and running')];
}
