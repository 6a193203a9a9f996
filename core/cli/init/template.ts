/** The commented host config `cloudlet init` writes: every choice explained where it is made. */

export interface InitChoices {
  file: string;
  hostId: string;
  transport: 'local' | 'amqp';
  url: string;
  prefix: string;
  stateDir: string;
  imagesDir: string;
  /** Undefined: QEMU user networking. */
  bridge: string | undefined;
  ipDiscovery: ('guest-agent' | 'dnsmasq' | 'arp')[];
  leaseFile: string | undefined;
  /** Managed mode: the agent runs dnsmasq on `bridge`, handing out this range. */
  dhcpRange?: { start: string; end: string } | undefined;
}

/**
 * A value as a YAML scalar: plain where that reads back as the same string, else double-quoted (JSON is valid
 * YAML). Unquoted, `/srv/vm #2` would lose " #2" to a comment and `/srv/a: b` would become a mapping.
 */
export function yamlScalar(value: string): string {
  const plain = /^[A-Za-z0-9/_.][A-Za-z0-9/_.@%+:=-]*$/.test(value) && !/^(true|false|null|yes|no|on|off|y|n|[0-9._]+(e[-+]?[0-9]+)?|0x[0-9a-f]+|0o[0-7]+|\.(inf|nan))$/i.test(value);
  return plain && !value.endsWith(':') ? value : JSON.stringify(value);
}

export function configTemplate(choices: InitChoices, now = new Date()): string {
  // Every value given on the command line goes into the file as a YAML scalar; the file name only into comments.
  const c = {
    ...choices,
    // Only in comments: a line break would end the comment.
    file: choices.file.replace(/[\r\n]/g, ' '),
    hostId: yamlScalar(choices.hostId),
    url: yamlScalar(choices.url),
    prefix: yamlScalar(choices.prefix),
    stateDir: yamlScalar(choices.stateDir),
    qemuStateDir: yamlScalar(`${choices.stateDir}/qemu`),
    imagesDir: yamlScalar(choices.imagesDir),
    bridge: choices.bridge === undefined ? undefined : yamlScalar(choices.bridge),
    leaseFile: choices.leaseFile === undefined ? undefined : yamlScalar(choices.leaseFile),
  };
  const amqp = c.transport === 'amqp';
  const transport = amqp
    ? `transport:
  kind: amqp                # RabbitMQ carries the messages between hosts and clients
  url: ${c.url}   # keep passwords out of this file: set CLOUDLET_AMQP_URL in /etc/cloudlet/cloudlet.env (mode 600)
  prefix: ${c.prefix}          # every exchange and queue starts with it: one prefix per cloud
  heartbeatMs: 2000         # how often this host announces itself
  downAfterMs: 6000         # silent this long: other hosts and clients treat it as down

routing:                    # how clients route a message sent without --host
  broadcast: [list-vms, list-images, host-info, sweep-now]   # every live host answers
  any: [create-vm]                                           # one host with capacity takes it`
    : `transport:
  kind: local               # one host: the CLI talks to the agent over a unix socket
  # socket: /run/cloudlet/agent.sock     # the default for root; per-user under $XDG_RUNTIME_DIR otherwise
# For several hosts, use RabbitMQ instead (and add the routing-direct and routing-fanout plugins):
# transport:
#   kind: amqp
#   url: amqp://cloudlet@broker.lan:5672   # the password goes in CLOUDLET_AMQP_URL, not here
#   prefix: cloudlet`;
  const network = c.bridge
    ? `      network:
        mode: bridge                    # each VM gets a tap on this bridge
        bridge: ${c.bridge}                     # must exist: ip link add ${c.bridge} type bridge && ip link set ${c.bridge} up`
    : `      network:
        mode: user                      # QEMU user networking: no bridge needed, but no inbound connections
        # mode: bridge                  # VMs on a host bridge (reachable from the LAN):
        # bridge: br0`;
  const discovery = c.ipDiscovery.map((strategy) => {
    if (strategy === 'dnsmasq' && c.dhcpRange && c.bridge) {
      return `  - use: ip-discovery-dnsmasq         # runs dnsmasq on the bridge (DHCP for the VMs) and reads its leases
    options:
      leaseFile: ${c.leaseFile}
      managed:                          # the bridge needs an IPv4 address in the range's subnet
        bridge: ${c.bridge}
        rangeStart: ${c.dhcpRange.start}
        rangeEnd: ${c.dhcpRange.end}
        leaseTime: 1h`;
    }
    if (strategy === 'dnsmasq') {
      return `  - use: ip-discovery-dnsmasq         # addresses from dnsmasq's DHCP leases
    options:
      leaseFile: ${c.leaseFile}`;
    }
    if (strategy === 'arp') {
      return `  - use: ip-discovery-arp             # addresses from the bridge's neighbour (ARP) table${c.bridge ? `\n    options:\n      bridge: ${c.bridge}` : ''}`;
    }
    return '  - use: ip-discovery-guest-agent     # addresses from qemu-guest-agent inside the guests';
  });
  const routingPlugins = amqp
    ? `  - use: routing-direct               # take requests addressed to this host...
    options:
      acceptAny: true                   # ...and any-host requests (create-vm without --host)
  - use: routing-fanout                 # answer broadcasts (vm list, image list, sweep)
`
    : '';
  return `# cloudlet host config for "${choices.hostId}", written by "cloudlet init" on ${now.toISOString().slice(0, 10)}.
#   check it:      cloudlet config check ${c.file}
#   check the host: cloudlet doctor --config ${c.file}
#   run it:        cloudlet install-service --config ${c.file}   (a systemd unit), or cloudlet agent --config ${c.file}
# The CLI reference is docs/CLI.md in the cloudlet package.

host:
  id: ${c.hostId}                  # lowercase letters, digits, "-"; VM ids start with it (${c.hostId}.abcdefgh)

${transport}

state:
  dir: ${c.stateDir}        # lasting state of this host; must be writable by the agent

log:
  level: info               # fatal | error | warn | info | debug | trace
  format: auto              # readable on a terminal, pino JSON otherwise (under systemd: journald)

shutdown:
  graceMs: 10000            # on SIGTERM, in-flight messages may finish for this long
  stopHookMs: 15000         # then each plugin's stop hook may take this long before shutdown goes on

plugins:
${routingPlugins}  - use: qemu-backend                   # QEMU VMs from base images
    options:
      imagesDir: ${c.imagesDir}   # NAME.qcow2, NAME.raw, NAME.img, or NAME/ with vmlinuz and initrd.img
      stateDir: ${c.qemuStateDir}    # one folder per VM: overlay disk, sockets, serial.log
      accel: auto                       # KVM when /dev/kvm is usable, else TCG (software, slow)
${network}
      limits:                           # what this host accepts; more is refused (NO_CAPACITY, VM_LIMIT)
        maxVms: 64
        maxTotalMemoryMiB: 16384
        maxMemoryMiB: 8192
        maxVcpus: 8
${discovery.join('\n')}
  # - use: metrics                      # Prometheus metrics on /metrics and /healthz for a monitor or load balancer
  #   options:
  #     listen: 127.0.0.1:9477          # keep it local, or firewall it: it tells what this host runs
`;
}
