/**
 * `cloudlet init`: writes a commented config for this host. It asks nothing: flags choose the transport,
 * bridge and folders, everything else gets the defaults. The text is validated like a real config before
 * it is written, and an existing file is never overwritten without --force.
 */
import { writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import process from 'node:process';
import { parseDocument } from 'yaml';
import { checkHostConfig } from '../../config/host-config.ts';
import { rawConfigFrom } from '../../config/load.ts';
import { configInvalidError } from '../../config/problems.ts';
import { defaultHostId } from '../../config/schema.ts';
import { hostIdSchema } from '../../envelope.ts';
import { cloudletError } from '../../errors.ts';
import { choiceFlag } from '../args.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { makeFolder, outputSource } from '../folders.ts';
import { configTemplate, type InitChoices } from '../init/template.ts';

const STRATEGIES = ['guest-agent', 'dnsmasq', 'arp'] as const;

export const initCommand: Command = {
  words: ['init'],
  usage: `cloudlet init [--output FILE] [--transport local|amqp] [--url AMQP_URL] [--prefix P] [--host-id ID]
              [--bridge BR] [--images-dir DIR] [--state-dir DIR] [--ip-discovery guest-agent,dnsmasq,arp]
              [--lease-file FILE] [--dhcp-range START,END] [--force] [--json]
  Writes a commented config for this host (default /etc/cloudlet/cloudlet.yaml as root, ./cloudlet.yaml
  otherwise; mode 640). --url implies --transport amqp. Without --bridge VMs use QEMU user networking.
  dnsmasq discovery reads the leases of a dnsmasq you run (--lease-file), or runs one on the bridge itself
  (--dhcp-range with --bridge: managed mode; the lease file defaults to STATE_DIR/dnsmasq/BR.leases).
  Refuses to overwrite a file unless --force.`,
  flags: ['output', 'transport', 'url', 'prefix', 'host-id', 'bridge', 'images-dir', 'state-dir', 'ip-discovery', 'lease-file', 'dhcp-range', 'force'],
  readsNoConfig: 'init writes a new config; name the file to write with --output FILE',
  async run({ positionals, values, output }) {
    if (positionals.length > 0) throw cloudletError('USAGE', `init takes no positional arguments, found "${positionals.join(' ')}"`);
    const file = resolve(values.output ?? (process.getuid?.() === 0 ? '/etc/cloudlet/cloudlet.yaml' : 'cloudlet.yaml'));
    const transport = choiceFlag(values, 'transport', ['local', 'amqp'] as const) ?? (values.url ? 'amqp' : 'local');
    if (values.url && transport !== 'amqp') throw cloudletError('USAGE', '--url is the RabbitMQ URL: it goes with --transport amqp');
    const hostId = values['host-id'] ?? defaultHostId();
    if (!hostIdSchema.safeParse(hostId).success) throw cloudletError('USAGE', `--host-id "${hostId}" is not a host id: lowercase letters, digits and "-", 1–63 characters`);
    const ipDiscovery = (values['ip-discovery'] ?? 'guest-agent').split(',').map((s) => s.trim());
    const unknown = ipDiscovery.filter((s) => !(STRATEGIES as readonly string[]).includes(s));
    if (unknown.length > 0) throw cloudletError('USAGE', `--ip-discovery takes ${STRATEGIES.join(', ')} (comma-separated), found "${unknown.join(', ')}"`);
    const dhcpRange = dhcpRangeFlag(values['dhcp-range'], values.bridge, ipDiscovery);
    if (ipDiscovery.includes('dnsmasq') && !values['lease-file'] && !dhcpRange) {
      throw cloudletError('USAGE', 'dnsmasq discovery needs --lease-file FILE (the file a dnsmasq you run writes with --dhcp-leasefile), or --dhcp-range START,END with --bridge BR for the agent to run dnsmasq on the bridge');
    }
    const stateDir = resolve(values['state-dir'] ?? '/var/lib/cloudlet');
    const choices: InitChoices = {
      file,
      hostId,
      transport,
      url: values.url ?? 'amqp://cloudlet@127.0.0.1:5672',
      prefix: values.prefix ?? 'cloudlet',
      stateDir,
      imagesDir: resolve(values['images-dir'] ?? `${stateDir}/images`),
      bridge: values.bridge,
      ipDiscovery: [...new Set(ipDiscovery)] as InitChoices['ipDiscovery'],
      leaseFile: values['lease-file'] !== undefined ? resolve(values['lease-file']) : dhcpRange ? `${stateDir}/dnsmasq/${values.bridge}.leases` : undefined,
      dhcpRange,
    };
    const text = configTemplate(choices);
    // The file must be one the agent accepts: check it exactly as `cloudlet config check` would, first.
    const checked = await checkHostConfig(rawConfigFrom(parseDocument(text).toJS() as unknown, file));
    if (!checked.ok) throw configInvalidError(checked.problems);
    await makeFolder(dirname(file), outputSource('--output', values.output, file), 0o755);
    await writeFile(file, text, { mode: 0o640, flag: values.force ? 'w' : 'wx' }).catch((error: NodeJS.ErrnoException) => {
      throw cloudletError('USAGE', error.code === 'EEXIST' ? `${file} exists; use --force to overwrite it` : `cannot write ${file}: ${error.message}`);
    });
    const plugins = checked.config.plugins.map((p) => p.plugin.name).filter((name) => name !== 'core');
    output.result(
      `wrote ${file} (host "${hostId}", transport ${transport}, plugins: ${plugins.join(', ')})\nnext: cloudlet doctor --config ${file}`,
      { ok: true, file, host: hostId, transport, plugins },
    );
    return EXIT.OK;
  },
};

/** `--dhcp-range START,END`: managed dnsmasq on --bridge, so it needs both and the dnsmasq strategy. */
function dhcpRangeFlag(value: string | undefined, bridge: string | undefined, ipDiscovery: string[]): InitChoices['dhcpRange'] {
  if (value === undefined) return undefined;
  const [start, end, ...rest] = value.split(',').map((s) => s.trim());
  if (start === undefined || end === undefined || rest.length > 0 || isIP(start) !== 4 || isIP(end) !== 4) {
    throw cloudletError('USAGE', `--dhcp-range takes two IPv4 addresses, START,END (e.g. 10.0.0.100,10.0.0.200), found "${value}"`);
  }
  if (bridge === undefined) throw cloudletError('USAGE', '--dhcp-range runs dnsmasq on the VM bridge: give the bridge with --bridge BR');
  if (!ipDiscovery.includes('dnsmasq')) throw cloudletError('USAGE', '--dhcp-range goes with dnsmasq discovery: add dnsmasq to --ip-discovery');
  return { start, end };
}
