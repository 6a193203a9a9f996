/**
 * A qemu-backend host with the sweeper, inside a throw-away network namespace (test/support/qemu-host.ts),
 * with real dnsmasq on its bridge and, on demand, every kind of leftover made for real: a QEMU started outside
 * the agent with the host's naming, records whose QEMU was SIGKILLed, a VM folder without a record, a tap of
 * no VM, a live lease of an unknown MAC, an expired lease line and a neighbour entry of a deleted VM. Beside
 * them, things the sweeper must never touch: a healthy VM, processes without our naming or of another host,
 * another host's folder, other taps, leases and neighbour entries outside the MAC prefixes, a static entry.
 */
import assert from 'node:assert/strict';
import { appendFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ReplyEnvelope } from '../../../core/envelope.ts';
import { makeRequest } from '../../../core/envelope.ts';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import { qemuArgv } from '../../../plugins/qemu-backend/qemu-args.ts';
import { vmPaths, type VmRecord } from '../../../plugins/qemu-backend/state.ts';
import type { SweepAction } from '../../../plugins/sweeper/options.ts';
import type { SweepResult } from '../../../plugins/sweeper/schemas.ts';
import { readLeases, startDnsmasq, type Dnsmasq, type Netns } from '../../support/netns.ts';
import { guestDir, startQemuHost, type QemuHost } from '../../support/qemu-host.ts';

const sweeperPath = fileURLToPath(new URL('../../../plugins/sweeper/index.ts', import.meta.url));
export const HOST = 'qhost';
const NEVER = '0 0 1 1 *';

export interface Vm {
  id: string;
  pid: number | null;
  mac: string;
  tap: string | null;
  state: string;
  desired: string;
}

export interface SweeperHost extends QemuHost {
  dnsmasq: Dnsmasq;
  leaseFile: string;
  sweep(payload?: Record<string, unknown>): Promise<SweepResult>;
  /** Restarts the agent with another action for both jobs (the VMs keep running). */
  setAction(action: SweepAction): Promise<void>;
  vm(id: string): Promise<Vm>;
  /** Running (a zombie is not). */
  alive(pid: number): Promise<boolean>;
  tapInfo(name: string): Promise<{ exists: boolean; up: boolean; master: string | null }>;
  neighbours(): Promise<{ dst: string; lladdr?: string; state?: string[] }[]>;
}

/**
 * Runs a command in the namespace with stdin closed from the start: netns.ts's exec writes to stdin after
 * spawning, which fails with EPIPE when a command as quick as `kill -0` has already exited.
 */
export async function inNs(ns: Netns, argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = ns.spawn(argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  proc.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const { code } = await proc.exited;
  return { code, stdout, stderr };
}

async function mustRun(ns: Netns, argv: string[]): Promise<string> {
  const result = await inNs(ns, argv);
  if (result.code !== 0) throw new Error(`'${argv.join(' ')}' exited ${result.code}: ${result.stderr.trim()}`);
  return result.stdout;
}

async function addTap(ns: Netns, name: string): Promise<string> {
  await mustRun(ns, ['ip', 'tuntap', 'add', 'dev', name, 'mode', 'tap']);
  await mustRun(ns, ['ip', 'link', 'set', name, 'master', ns.bridge]);
  await mustRun(ns, ['ip', 'link', 'set', name, 'up']);
  return name;
}

export function ok<T>(reply: ReplyEnvelope): T {
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  return reply.result as T;
}

// No `qemu` block: the sweeper follows qemu-backend's stateDir, tap prefix and binaries (core API 1.6).
function sweeperYaml(leaseFile: string, action: SweepAction): string {
  const options = {
    minAgeMs: 0,
    jitterMs: 0,
    jobs: {
      orphans: { schedule: NEVER, action, stopTimeoutMs: 5_000 },
      leases: { schedule: NEVER, action, interface: 'br0', leaseFile },
    },
  };
  // JSON is YAML: one line, easy to swap when the action changes.
  return `  - use: ${sweeperPath}\n    options: ${JSON.stringify(options)}\n`;
}

export async function startSweeperHost(t: TestContext, action: SweepAction): Promise<SweeperHost> {
  let dnsmasq: Dnsmasq | undefined;
  let leaseFile = '';
  const nowSeconds = () => Math.floor(Date.now() / 1000);
  const host = await startQemuHost(t, {
    stopTimeoutMs: 5_000,
    beforeAgent: async (ns) => {
      // A bridge without a fixed MAC takes its lowest port's: removing that port changes the bridge's MAC, and
      // the kernel then flushes the bridge's whole neighbour table, static entries included. Hosts fix it too.
      await mustRun(ns, ['ip', 'link', 'set', 'dev', ns.bridge, 'address', 'aa:00:00:00:00:01']);
      leaseFile = join(ns.dir, 'dnsmasq.leases');
      // dnsmasq reads its lease file only when it starts: these two it will hold as live leases.
      await writeFile(leaseFile, `${nowSeconds() + 3600} ${GHOST_MAC} 10.77.0.190 ghost *\n${nowSeconds() + 3600} ${FOREIGN_MAC} 10.77.0.192 other *\n`);
      dnsmasq = await startDnsmasq(ns, { leaseFile });
    },
    pluginsYaml: (ns) => sweeperYaml(join(ns.dir, 'dnsmasq.leases'), action),
  });
  const sweeper: SweeperHost = Object.assign(host, {
    dnsmasq: dnsmasq!,
    leaseFile,
    async sweep(payload: Record<string, unknown> = {}) {
      return ok<SweepResult>(await host.client.request(makeRequest({ type: 'sweep-now', payload }), { onProgress: () => {} }));
    },
    async setAction(next: SweepAction) {
      await host.stopAgent();
      const config = await readFile(host.configFile, 'utf8');
      await writeFile(host.configFile, config.replace(/ {2}- use: \S+sweeper\/index\.ts\n {4}options: .*\n/, sweeperYaml(leaseFile, next)));
      await host.startAgent();
    },
    vm: async (id: string) => ok<Vm>(await host.call('get-vm', { vm: id })),
    // The namespace's PID 1 (a shell waiting on its stdin) never reaps: a killed daemon stays a zombie there.
    async alive(pid: number) {
      const stat = await inNs(host.ns, ['cat', `/proc/${pid}/stat`]);
      return stat.code === 0 && !/^\S+ \(.*\) [ZX] /.test(stat.stdout);
    },
    async tapInfo(name: string) {
      const result = await inNs(host.ns, ['ip', '-j', 'link', 'show', 'dev', name]);
      if (result.code !== 0) return { exists: false, up: false, master: null };
      const [link] = JSON.parse(result.stdout) as { flags: string[]; master?: string }[];
      return { exists: true, up: link!.flags.includes('UP'), master: link!.master ?? null };
    },
    neighbours: async () => JSON.parse(await mustRun(host.ns, ['ip', '-j', 'neigh', 'show', 'dev', 'br0', 'nud', 'all'])) as { dst: string; lladdr?: string; state?: string[] }[],
  });
  return sweeper;
}

export const GHOST_MAC = '02:de:ad:be:ef:01';
export const EXPIRED_MAC = '02:de:ad:be:ef:02';
export const FOREIGN_MAC = '52:54:00:aa:bb:cc';
export const DELETED_VM_MAC = '02:de:ad:be:ef:03';
export const STATIC_MAC = '02:de:ad:be:ef:04';

export interface Leftovers {
  healthy: Vm;
  deadAutostart: Vm;
  deadPlain: Vm;
  orphan: { id: string; pid: number; tap: string; mac: string; folder: string };
  bareFolder: string;
  strayTap: string;
  /** A VM create-vm is still at work on: a folder without vm.json but with a creating mark that holds, and its tap. */
  creating: { folder: string; tap: string };
  /** Processes, folders, files, taps the sweeper must never touch. */
  foreign: { pids: number[]; folder: string; file: string; taps: string[] };
}

/** Makes every leftover (and the look-alikes) and waits until the booting guests have their leases. */
export async function makeLeftovers(host: SweeperHost): Promise<Leftovers> {
  const { ns, stateDir } = host;
  const create = async (extra: Record<string, unknown> = {}) => ok<Vm>(await host.call('create-vm', { image: 'tiny', memory: 96, vcpus: 1, ...extra }));
  const healthy = await create();
  const deadAutostart = await create({ autostart: true });
  const deadPlain = await create();
  for (const vm of [deadAutostart, deadPlain]) await mustRun(ns, ['kill', '-KILL', String(vm.pid)]);

  // A QEMU with this host's naming, started outside the agent with qemu-backend's own command line.
  const id = `${HOST}.orphanqq`;
  const tap = await addTap(ns, 'cltorphanqq');
  const mac = '02:0e:00:00:00:01';
  const options = qemuOptionsSchema.parse({ imagesDir: join(ns.dir, 'images'), stateDir, accel: 'tcg', network: { mode: 'bridge', bridge: ns.bridge } });
  const now = new Date().toISOString();
  const record: VmRecord = {
    v: 1, id, host: HOST, image: 'tiny', imageKind: 'kernel', memoryMiB: 96, vcpus: 1, mac,
    network: { mode: 'bridge', bridge: ns.bridge, tap }, autostart: false, desired: 'running', createdAt: now, updatedAt: now,
  };
  const paths = vmPaths(stateDir, id);
  await mkdir(paths.dir, { recursive: true });
  const image = { kind: 'kernel' as const, name: 'tiny', kernel: join(guestDir, 'vmlinuz'), initrd: join(guestDir, 'initrd.img'), cmdline: 'console=ttyS0 quiet panic=-1' };
  await mustRun(ns, qemuArgv(options, record, image, paths, 'tcg'));
  const orphanPid = Number((await readFile(paths.pidfile, 'utf8')).trim());

  // Look-alikes: our name on a process that is not QEMU, another host's naming on a real QEMU, no naming.
  const sleeper = ns.spawn(['bash', '-c', 'exec -a cloudlet-otherhost.abcdefgh sleep 1000']);
  const impostor = ns.spawn(['bash', '-c', 'sleep 1000; :', '-name', `cloudlet-${HOST}.impostor`]);
  await mkdir(join(stateDir, 'otherhost.abcdefgh'), { recursive: true });
  const otherHostQemu = ns.spawn([
    'qemu-system-x86_64', '-S', '-name', 'cloudlet-otherhost.abcdefgh', '-pidfile', join(stateDir, 'otherhost.abcdefgh', 'qemu.pid'),
    '-m', '32', '-display', 'none', '-monitor', 'none', '-nic', 'none',
  ]);
  const unnamedQemu = ns.spawn(['qemu-system-x86_64', '-S', '-name', 'other-thing', '-m', '32', '-display', 'none', '-monitor', 'none', '-nic', 'none']);

  const bareFolder = join(stateDir, `${HOST}.leftover`);
  await mkdir(bareFolder, { recursive: true });
  await writeFile(join(bareFolder, 'disk.qcow2'), 'an overlay of a VM that is gone');
  const foreignFolder = join(stateDir, 'otherhost.leftover');
  await mkdir(foreignFolder, { recursive: true });
  await writeFile(join(foreignFolder, 'disk.qcow2'), 'not ours');
  const foreignFile = join(stateDir, 'README');
  await writeFile(foreignFile, 'operator notes');
  const strayTap = await addTap(ns, 'cltstrayxyz');
  // minAgeMs is 0 here, so only the mark can keep this folder and its tap from being swept. Its writer is
  // pid 1, which lives in any pid namespace.
  const creatingFolder = join(stateDir, `${HOST}.makingvm`);
  await mkdir(creatingFolder, { recursive: true });
  await writeFile(join(creatingFolder, 'creating'), JSON.stringify({ pid: 1, agentStartedAt: 0, until: Date.now() + 3_600_000 }));
  await writeFile(join(creatingFolder, 'disk.qcow2'), 'an overlay being made');
  const creatingTap = await addTap(ns, 'cltmakingvm');
  const foreignTaps = [await addTap(ns, 'tap9'), await addTap(ns, 'xyzstrayxyz')];

  await mustRun(ns, ['ip', 'neigh', 'replace', '10.77.0.250', 'lladdr', DELETED_VM_MAC, 'dev', ns.bridge, 'nud', 'stale']);
  await mustRun(ns, ['ip', 'neigh', 'replace', '10.77.0.251', 'lladdr', STATIC_MAC, 'dev', ns.bridge, 'nud', 'permanent']);
  await mustRun(ns, ['ip', 'neigh', 'replace', '10.77.0.252', 'lladdr', '52:54:00:11:22:33', 'dev', ns.bridge, 'nud', 'stale']);

  // Both booting guests take a lease (and make dnsmasq rewrite its file) before the expired line goes in.
  await Promise.all([host.dnsmasq.waitForLease(healthy.mac, 120_000), host.dnsmasq.waitForLease(mac, 120_000)]);
  await appendFile(host.leaseFile, `${Math.floor(Date.now() / 1000) - 3600} ${EXPIRED_MAC} 10.77.0.191 old *\n`);

  // nsenter's child is the process inside the namespace; its pid there is what the sweeper sees.
  const pids = await Promise.all([sleeper, impostor, otherHostQemu, unnamedQemu].map((proc) => innerPid(host, proc.child.pid!)));
  return {
    healthy,
    deadAutostart,
    deadPlain,
    orphan: { id, pid: orphanPid, tap, mac, folder: paths.dir },
    bareFolder,
    strayTap,
    creating: { folder: creatingFolder, tap: creatingTap },
    foreign: { pids, folder: foreignFolder, file: foreignFile, taps: foreignTaps },
  };
}

/** The pid, inside the namespace, of what an `ns.spawn` runs: NSpid's last field of nsenter's child. */
async function innerPid(host: SweeperHost, nsenterPid: number): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const children = (await readFile(`/proc/${nsenterPid}/task/${nsenterPid}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
    if (children[0]) {
      const status = await readFile(`/proc/${children[0]}/status`, 'utf8');
      const nspid = /^NSpid:\s+(.+)$/m.exec(status)?.[1]?.trim().split(/\s+/).at(-1);
      if (nspid) return Number(nspid);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no process inside the namespace for nsenter pid ${nsenterPid} (host ${host.dir})`);
}

export async function leaseMacs(host: SweeperHost): Promise<string[]> {
  return (await readLeases(host.leaseFile)).map((l) => l.mac).sort();
}
