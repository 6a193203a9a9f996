/**
 * The seed system's wire format against two real cloudlet hosts: the Python client (pika, nothing from this
 * project) on the shared RabbitMQ, each host an agent with real QEMU in its own network namespace.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import test, { type TestContext } from 'node:test';
import type { ReplyEnvelope } from '../../core/envelope.ts';
import { relayBrokerIntoNetns } from '../support/broker-relay.ts';
import { startDnsmasq } from '../support/netns.ts';
import { startQemuHost, type QemuHost } from '../support/qemu-host.ts';
import { expectNoUnacked, isError, queueState, reasonOf, responseOf, uniqueBroker, type Broker, type Reply } from '../plugins/protocol-aetherscale/support.ts';

const pluginPath = fileURLToPath(new URL('../../plugins/protocol-aetherscale/index.ts', import.meta.url));

interface AetherscaleHost extends QemuHost {
  id: string;
}

interface Listed {
  'vm-id': string;
  'ip-addresses': string[];
  hint?: string;
}

interface CloudletVm {
  id: string;
  state: string;
}

/**
 * An agent with qemu-backend, the guest-agent IP discovery and protocol-aetherscale in its own network
 * namespace, with dnsmasq on its bridge and the shared broker relayed in (the namespace has its own loopback).
 */
async function startHost(t: TestContext, broker: Broker, id: string): Promise<AetherscaleHost> {
  let brokerUrl = '';
  const options = {
    exchange: broker.exchange,
    competingQueue: broker.competingQueue,
    memory: 128,
    vcpus: 1,
    // Long enough that the graceful stop below answers with its real outcome.
    stopReplyAfterMs: 15_000,
  };
  const host = await startQemuHost(t, {
    hostId: id,
    // One VM per host: the second create must land on the other host (handed on if need be), the third on none.
    limits: { maxVms: 1 },
    beforeAgent: async (ns) => {
      await startDnsmasq(ns);
      brokerUrl = (await relayBrokerIntoNetns(t, ns, Number(new URL(broker.url).port || 5672))).url;
    },
    pluginsYaml: () => `  - use: ip-discovery-guest-agent\n  - use: ${pluginPath}\n    options: ${JSON.stringify({ url: brokerUrl, ...options })}\n`,
  });
  broker.track(() => host.stopAgent());
  return Object.assign(host, { id });
}

function ok<T>(reply: ReplyEnvelope): T {
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  return reply.result as T;
}

/** Which host has the VM with these letters, and its cloudlet id, asked over each host's own transport. */
async function ownerOf(hosts: AetherscaleHost[], letters: string): Promise<{ host: AetherscaleHost; id: string; state: string }> {
  for (const host of hosts) {
    const vm = ok<{ vms: CloudletVm[] }>(await host.call('list-vms', {})).vms.find((v) => v.id === `${host.id}.${letters}`);
    if (vm) return { host, id: vm.id, state: vm.state };
  }
  throw new Error(`no host has a VM ending in .${letters}`);
}

/** Exactly one reply within the window: the owner's (the other host stays silent). */
async function single(broker: Broker, args: string[], timeoutS = 10): Promise<Reply> {
  const run = await broker.client(['--timeout', String(timeoutS), '--expect', '1', '--grace', '1.5', ...args]);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.replies.length, 1, `${args.join(' ')} → ${JSON.stringify(run.replies)}`);
  return run.replies[0]!;
}

async function leaseOf(host: AetherscaleHost, vm: string): Promise<string> {
  await host.waitForSerial(vm, 'cloudlet-guest: lease', 90_000);
  const ip = /cloudlet-guest: lease (\S+)/.exec(await host.serialLog(vm))?.[1];
  assert.ok(ip, 'the guest printed its lease');
  return ip;
}

test('aetherscale e2e — two QEMU hosts driven by the Python client: create, list with IPs, stop, kill, start, delete; bad requests answered and acked', async (t) => {
  const broker = uniqueBroker(t);
  const hosts = await Promise.all([startHost(t, broker, 'aeth-a'), startHost(t, broker, 'aeth-b')]);
  // Each step dumps the agents' last lines when it fails (later steps build on earlier ones).
  const step = (name: string, fn: (st: TestContext) => Promise<void>) =>
    t.test(name, async (st) => {
      try {
        await fn(st);
      } catch (error) {
        for (const host of hosts) st.diagnostic(`--- ${host.id} agent output (tail) ---\n${host.agentOutput().split('\n').slice(-40).join('\n')}`);
        throw error;
      }
    });

  let vm1 = '';
  await step('create-vm: allocating, then starting, with the same 8-letter id', async () => {
    const run = await broker.client(['--timeout', '60', '--expect', '2', '--grace', '1', 'create-vm', 'tiny-qga']);
    assert.equal(run.code, 0, run.stderr);
    const statuses = run.replies.map((r) => responseOf<{ status: string; 'vm-id': string }>(r));
    assert.deepEqual(statuses.map((s) => s.status), ['allocating', 'starting'], JSON.stringify(run.replies));
    vm1 = statuses[1]!['vm-id'];
    assert.match(vm1, /^[a-z]{8}$/);
    assert.equal(statuses[0]!['vm-id'], vm1);
  });
  const owner1 = await ownerOf(hosts, vm1);
  const other = hosts.find((h) => h !== owner1.host)!;

  let vm2 = '';
  await step('a second create (image given as a path) lands on the other host; a third finds no room anywhere', async () => {
    const run = await broker.client(['--timeout', '60', '--expect', '2', '--grace', '1', 'create-vm', 'images/tiny-qga.qcow2']);
    const statuses = run.replies.map((r) => responseOf<{ status: string; 'vm-id': string }>(r));
    assert.deepEqual(statuses.map((s) => s.status), ['allocating', 'starting'], JSON.stringify(run.replies));
    vm2 = statuses[1]!['vm-id'];
    assert.equal((await ownerOf(hosts, vm2)).host, other);
    const full = await single(broker, ['create-vm', 'tiny-qga'], 20);
    assert.ok(isError(full));
    assert.match(reasonOf(full), /^No host has capacity for the VM \(refused by aeth-[ab], aeth-[ab]\)/);
  });

  await step('list-vms: each host answers with its own VM and the IP its guest leased', async () => {
    const expected = new Map([
      [vm1, await leaseOf(owner1.host, owner1.id)],
      [vm2, await leaseOf(other, `${other.id}.${vm2}`)],
    ]);
    const deadline = Date.now() + 90_000;
    let lists: Listed[][] = [];
    for (;;) {
      const run = await broker.client(['--timeout', '10', '--expect', '2', 'list-vms']);
      lists = run.replies.map((r) => responseOf<Listed[]>(r));
      const all = lists.flat();
      if (lists.length === 2 && all.length === 2 && all.every((vm) => vm['ip-addresses'].length > 0)) break;
      if (Date.now() > deadline) assert.fail(`no addresses in time: ${JSON.stringify(lists)}`);
      await new Promise((r) => setTimeout(r, 1_000));
    }
    assert.deepEqual(lists.map((list) => list.length), [1, 1], 'one reply per host, each with its own VM');
    for (const vm of lists.flat()) {
      assert.deepEqual(vm['ip-addresses'].filter((ip) => !ip.includes(':')), [expected.get(vm['vm-id'])], JSON.stringify(vm));
      assert.equal(vm.hint, undefined);
    }
  });

  await step('stop-vm: the guest powers off; only the owner answers; again says it was not running', async () => {
    const stopped = await single(broker, ['stop-vm', vm1], 30);
    assert.deepEqual(responseOf(stopped), { status: 'stopped', 'vm-id': vm1 });
    assert.match(await owner1.host.serialLog(owner1.id), /cloudlet-guest: poweroff/);
    assert.equal((await ownerOf(hosts, vm1)).state, 'stopped');
    const again = await single(broker, ['stop-vm', vm1]);
    assert.deepEqual(responseOf(again), { status: 'stopped', 'vm-id': vm1, hint: `VM "${vm1}" was not running` });
  });

  await step('start-vm: starting; again: a hint that it was already started', async () => {
    assert.deepEqual(responseOf(await single(broker, ['start-vm', vm1], 30)), { status: 'starting', 'vm-id': vm1 });
    assert.equal((await ownerOf(hosts, vm1)).state, 'running');
    assert.deepEqual(responseOf(await single(broker, ['start-vm', vm1])), { status: 'starting', 'vm-id': vm1, hint: `VM "${vm1}" was already started` });
  });

  await step('stop-vm --kill: killed at once', async () => {
    assert.deepEqual(responseOf(await single(broker, ['stop-vm', vm1, '--kill'], 30)), { status: 'killed', 'vm-id': vm1 });
    assert.equal((await ownerOf(hosts, vm1)).state, 'stopped');
    assert.notEqual((await owner1.host.ns.exec(['pgrep', '-f', `cloudlet-${owner1.id}`])).code, 0, 'no QEMU process left');
  });

  await step('delete-vm: deleted by the owner; deleting again gets no reply from anyone', async () => {
    assert.deepEqual(responseOf(await single(broker, ['delete-vm', vm1], 30)), { status: 'deleted', 'vm-id': vm1 });
    assert.deepEqual(ok<{ vms: CloudletVm[] }>(await owner1.host.call('list-vms', {})).vms, []);
    const gone = await broker.client(['--timeout', '2.5', 'delete-vm', vm1]);
    assert.deepEqual(gone.replies, []);
    assert.deepEqual(responseOf(await single(broker, ['delete-vm', vm2], 30)), { status: 'deleted', 'vm-id': vm2 });
  });

  await step('bad requests get error replies (from every host for the commands every host receives)', async () => {
    const cases: [string[], number, RegExp][] = [
      [['raw', '{"options": {}}', '--routing-key', 'create-vm'], 1, /^No "command" specified in message$/],
      [['raw', '{"options": {}}', '--routing-key', 'list-vms'], 2, /^No "command" specified in message$/],
      [['raw', '{"command": "resize-vm", "options": {}}', '--routing-key', 'create-vm'], 1, /^Invalid command "resize-vm" specified/],
      [['raw', '{"command": "stop-vm", "options": {"kill": true}}'], 2, /^VM ID not specified$/],
      [['raw', '{"command": "delete-vm"}'], 2, /^VM ID not specified$/],
      [['create-vm', 'no-such-image'], 1, /^Image "no-such-image" does not exist; available images: tiny, tiny-qga$/],
      [['raw', 'not json at all', '--routing-key', 'start-vm'], 2, /^Message is not valid JSON/],
    ];
    for (const [args, count, reason] of cases) {
      const run = await broker.client(['--timeout', '10', '--expect', String(count), '--grace', '1', ...args]);
      assert.equal(run.replies.length, count, `${args.join(' ')} → ${JSON.stringify(run.replies)}`);
      for (const reply of run.replies) {
        assert.ok(isError(reply), JSON.stringify(reply));
        assert.match(reasonOf(reply), reason);
      }
    }
  });

  await step('nothing is left unacked, and the hosts leave the shared queue empty when they stop', async (st) => {
    const unacked = await expectNoUnacked(broker.exchange);
    if (unacked) assert.deepEqual([...unacked.values()], [0, 0, 0], JSON.stringify([...unacked]));
    else st.diagnostic('rabbitmqctl is not usable here: checked from the agent logs and the queue only');
    for (const host of hosts) {
      const settled = host.agentOutput().split('\n').filter((line) => line.includes('"msg":"aetherscale request '));
      assert.ok(settled.length > 0);
      assert.ok(settled.every((line) => /"settled":"(acked|handed on)"/.test(line)), settled.join('\n'));
    }
    assert.deepEqual(await queueState(broker.url, broker.competingQueue), { messageCount: 0, consumerCount: 2 });
    await Promise.all(hosts.map((h) => h.stopAgent()));
    assert.deepEqual(hosts.map((h) => h.agent.child.exitCode), [0, 0]);
    assert.deepEqual(await queueState(broker.url, broker.competingQueue), { messageCount: 0, consumerCount: 0 });
  });
});
