import assert from 'node:assert/strict';
import test from 'node:test';
import { parse } from 'yaml';
import { configTemplate, yamlScalar, type InitChoices } from '../../../core/cli/init/template.ts';

const base: InitChoices = {
  file: '/etc/cloudlet/cloudlet.yaml',
  hostId: 'node1',
  transport: 'amqp',
  url: 'amqp://cloudlet@broker.lan:5672/prod',
  prefix: 'cloudlet',
  stateDir: '/var/lib/cloudlet',
  imagesDir: '/var/lib/cloudlet/images',
  bridge: 'br0',
  ipDiscovery: ['dnsmasq', 'arp'],
  leaseFile: '/var/lib/misc/dnsmasq.leases',
};

interface Written {
  state: { dir: string };
  transport: { url: string; prefix: string };
  plugins: { use: string; options?: Record<string, unknown> }[];
}

test('init template — every value reads back exactly as given, whatever YAML would make of it unquoted', () => {
  // Before, values went in unquoted: "/srv/vm #2" read back as "/srv/vm" (the rest a comment), and
  // "/srv/a: b" as a mapping, while init said it had written them.
  const odd = { stateDir: '/srv/vm #2', imagesDir: '/srv/a: b', leaseFile: "/x/it's [1].leases", url: 'amqp://u:p#w@host/v', prefix: 'true', bridge: 'br-0' };
  const written = parse(configTemplate({ ...base, ...odd })) as Written;
  assert.equal(written.state.dir, odd.stateDir);
  assert.equal(written.transport.url, odd.url);
  assert.equal(written.transport.prefix, 'true');
  const qemu = written.plugins.find((p) => p.use === 'qemu-backend')?.options as { stateDir: string; imagesDir: string; network: { bridge: string } };
  assert.deepEqual([qemu.stateDir, qemu.imagesDir, qemu.network.bridge], [`${odd.stateDir}/qemu`, odd.imagesDir, 'br-0']);
  assert.equal(written.plugins.find((p) => p.use === 'ip-discovery-dnsmasq')?.options?.leaseFile, odd.leaseFile);
  // Ordinary values stay plain, as a person would write them.
  const plain = configTemplate(base);
  assert.match(plain, /^ {2}dir: \/var\/lib\/cloudlet {2}/m);
  assert.match(plain, /^ {2}url: amqp:\/\/cloudlet@broker.lan:5672\/prod /m);
});

test('init template — yamlScalar quotes what YAML would read as something else', () => {
  for (const value of ['/srv/vm #2', 'a: b', 'true', 'no', '~', '12', '1e3', '0x1f', '-', ' lead', 'trail ', 'x\ny', '', '"q"', "'q'", '[a]', '{a}', '*ref', '&anchor', '!tag', '%dir', '@at', '`tick', '.inf', '.NaN', '+1', '-x', '1_000', 'a #b', 'a:']) {
    assert.equal(parse(`v: ${yamlScalar(value)}\n`).v, value, JSON.stringify(value));
  }
  assert.equal(yamlScalar('/var/lib/cloudlet'), '/var/lib/cloudlet');
  assert.equal(yamlScalar('amqp://host:5672'), 'amqp://host:5672');
});
