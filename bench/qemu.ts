/**
 * Benchmark 6: qemu-backend on a real host. create-vm until QEMU runs (the reply; the guest boots after,
 * untimed), against QEMU alone started with the same command line; list-vms with 1,000 VM records on one
 * host, against reading the records alone; and the sweeper over a 10,000-line lease file.
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRequest, type ReplyEnvelope } from '../core/envelope.ts';
import { qemuArgv } from '../plugins/qemu-backend/qemu-args.ts';
import { resolveImage } from '../plugins/qemu-backend/images.ts';
import { qemuOptionsSchema } from '../plugins/qemu-backend/options.ts';
import { listRecords, vmPaths } from '../plugins/qemu-backend/state.ts';
import { ensureGuest, guestDir } from '../test/support/qemu-host.ts';
import type { Netns } from '../test/support/netns.ts';
import type { BenchContext, Benchmark } from './lib/context.ts';
import { benchTempDir, startLocalAgent } from './lib/local.ts';
import { benchNetns, startNetnsAgent, type NetnsAgent } from './lib/netns-agent.ts';
import { ratio, target, type Row, type Target } from './lib/report.ts';
import { summarize, type LatencySummary } from './lib/stats.ts';
import { vmRecord, writeVmRecords } from './lib/vm-records.ts';

function ok<T>(reply: ReplyEnvelope, what: string): T {
  if (!reply.ok) throw new Error(`${what}: ${reply.error?.code} ${reply.error?.message}`);
  return reply.result as T;
}

const row = (label: string, f: LatencySummary, floor: LatencySummary | undefined, extra: Record<string, number | null> = {}, note?: string): Row => ({
  case: label,
  values: { p50Ms: f.p50Ms, p99Ms: f.p99Ms, meanMs: f.meanMs, n: f.n, floorRatio: ratio(f.p50Ms, floor?.p50Ms), ...extra },
  ...(note ? { note } : {}),
});

/** Copies the tiny test guest (kernel + initrd) in as the image "tiny". */
async function tinyImage(imagesDir: string): Promise<void> {
  ensureGuest();
  await mkdir(join(imagesDir, 'tiny'), { recursive: true });
  await copyFile(join(guestDir, 'vmlinuz'), join(imagesDir, 'tiny', 'vmlinuz'));
  await copyFile(join(guestDir, 'initrd.img'), join(imagesDir, 'tiny', 'initrd.img'));
  await writeFile(join(imagesDir, 'tiny', 'cmdline'), 'console=ttyS0 quiet panic=-1');
}

/** QEMU alone, with the command line qemu-backend builds (no tap): from exec to the daemonized parent's exit. */
async function bareQemuStart(ctx: BenchContext, imagesDir: string, dir: string, iterations: number): Promise<LatencySummary> {
  const options = qemuOptionsSchema.parse({ imagesDir, stateDir: dir, accel: 'tcg', network: { mode: 'none' } });
  const image = await resolveImage(imagesDir, 'tiny', options.qemuImgBinary);
  const samples: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const record = vmRecord('floor', 900_000 + i, undefined);
    const paths = vmPaths(dir, record.id);
    await mkdir(paths.dir, { recursive: true });
    const argv = qemuArgv(options, record, image, paths, 'tcg');
    const started = performance.now();
    const code = await new Promise<number | null>((resolve, reject) => {
      const child = spawn(argv[0] as string, argv.slice(1), { stdio: 'ignore' });
      child.once('error', reject);
      child.once('exit', resolve);
    });
    samples.push(performance.now() - started);
    const pid = Number((await readFile(paths.pidfile, 'utf8').catch(() => '')).trim());
    if (code !== 0 || !(pid > 0)) throw new Error(`bare QEMU did not start (exit ${code})`);
    ctx.scope.after(() => killQuietly(pid));
    killQuietly(pid);
  }
  return summarize(samples, 0);
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function createVms(ctx: BenchContext, ns: Netns, agent: NetnsAgent, iterations: number) {
  const totals: number[] = [];
  const toStarting: number[] = [];
  const startingToRunning: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const stages = new Map<string, number>();
    const started = performance.now();
    const reply = await agent.client.request(makeRequest({ type: 'create-vm', payload: { image: 'tiny', memory: 128, vcpus: 1, network: 'bridge' } }), {
      onProgress: (progress) => stages.set(progress.stage, performance.now()),
    });
    const done = performance.now();
    const vm = ok<{ id: string; state: string }>(reply, 'create-vm');
    if (vm.state !== 'running') throw new Error(`create-vm answered state ${vm.state}`);
    totals.push(done - started);
    const starting = stages.get('starting');
    if (starting !== undefined) {
      toStarting.push(starting - started);
      startingToRunning.push((stages.get('running') ?? done) - starting);
    }
    ctx.log(`qemu: create-vm ${i + 1}/${iterations}: ${(done - started).toFixed(0)} ms`);
    // Not timed: quit the VM at once and remove it, so the next create starts on a quiet machine.
    ok(await agent.client.request(makeRequest({ type: 'stop-vm', payload: { vm: vm.id, force: true } })), 'stop-vm');
    ok(await agent.client.request(makeRequest({ type: 'delete-vm', payload: { vm: vm.id } })), 'delete-vm');
  }
  return { total: summarize(totals, 0), toStarting: summarize(toStarting, 0), startingToRunning: summarize(startingToRunning, 0) };
}

/** 10,000 lease lines: a few of this host's VMs, a few stale (02: MACs of no VM), the rest of other machines. */
function leaseFileText(count: number, ownMacs: readonly string[], stale: number): string {
  const expiry = Math.floor(Date.now() / 1000) + 3600;
  const lines: string[] = [];
  for (let i = 0; i < count; i++) {
    const ip = `10.${(i >> 16) & 0xff}.${(i >> 8) & 0xff}.${i & 0xff}`;
    const own = ownMacs[i];
    const mac =
      own ??
      (i < ownMacs.length + stale
        ? `02:5e:${((i >> 16) & 0xff).toString(16).padStart(2, '0')}:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}:01`
        : `52:54:00:${((i >> 16) & 0xff).toString(16).padStart(2, '0')}:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`);
    lines.push(`${expiry} ${mac} ${ip} host${i} 01:${mac}`);
  }
  return `${lines.join('\n')}\n`;
}

export const qemuBenchmark: Benchmark = {
  id: '6',
  title: 'qemu-backend: create-vm → QEMU running; list-vms with 1,000 records; a sweep over 10,000 lease lines',
  async run(ctx) {
    const { scope } = ctx;
    const rows: Row[] = [];
    const targets: Target[] = [];
    const notes: string[] = [];

    // A. create-vm → running, in a namespace with a bridge (each VM gets a tap), against QEMU alone.
    const ns = await benchNetns(scope);
    const imagesDir = join(ns.dir, 'images');
    await tinyImage(imagesDir);
    const createIterations = ctx.pick({ full: 8, quick: 4, smoke: 1 });
    const floor = await bareQemuStart(ctx, imagesDir, join(ns.dir, 'floor'), createIterations);
    const qemuHost = await startNetnsAgent(scope, ns, 'qhost', [
      `  - use: qemu-backend\n    options:\n      imagesDir: ${imagesDir}\n      stateDir: ${join(ns.dir, 'vms')}\n      accel: tcg\n      network:\n        mode: bridge\n        bridge: ${ns.bridge}`,
    ]);
    const created = await createVms(ctx, ns, qemuHost, createIterations);
    rows.push(row('floor: QEMU alone, same command line (no tap), exec → daemonized', floor, floor));
    rows.push(
      row('create-vm → reply (QEMU running)', created.total, floor, {}, `of which: request → "starting" p50 ${created.toStarting.p50Ms.toFixed(0)} ms (checks, record), "starting" → reply p50 ${created.startingToRunning.p50Ms.toFixed(0)} ms (tap, QEMU)`),
    );
    targets.push(target('create-vm → QEMU running ≤ 300 ms (p50, guest boot excluded)', created.total.p50Ms, 300, 'ms', 'le', 'see docs/PERFORMANCE.md, finding F7'));
    notes.push('create-vm: the tiny test guest (kernel + initrd, 128 MiB, 1 vCPU) under TCG, a tap on a bridge in a throw-away network namespace; each VM is force-stopped and deleted before the next create (untimed).');

    // B. list-vms with 1,000 records on one host (records only: no processes), against reading them alone.
    const recordCount = ctx.pick({ full: 1_000, quick: 1_000, smoke: 50 });
    const listDir = await benchTempDir(scope);
    const listState = join(listDir, 'vms');
    await mkdir(join(listDir, 'images'), { recursive: true });
    await writeVmRecords(listState, 'lhost', 0, recordCount, 'br0');
    const lister = await startLocalAgent(
      scope,
      {
        dir: listDir,
        hostId: 'lhost',
        pluginsYaml: [`  - use: qemu-backend\n    options:\n      imagesDir: ${join(listDir, 'images')}\n      stateDir: ${listState}\n      accel: tcg\n      network:\n        mode: none`],
      },
      ctx.agentSpawnOptions('list-vms'),
    );
    const listIterations = ctx.pick({ full: 20, quick: 10, smoke: 2 });
    const listOnce = async () => {
      const started = performance.now();
      const result = ok<{ vms: unknown[] }>(await lister.client.request(makeRequest({ type: 'list-vms', payload: {} })), 'list-vms');
      if (result.vms.length !== recordCount) throw new Error(`list-vms listed ${result.vms.length} of ${recordCount} VMs`);
      return performance.now() - started;
    };
    await listOnce(); // warm-up: the pool's worker thread starts on the first message
    const lists: number[] = [];
    const reads: number[] = [];
    for (let i = 0; i < listIterations; i++) {
      lists.push(await listOnce());
      const started = performance.now();
      await listRecords(listState);
      reads.push(performance.now() - started);
    }
    const readFloor = summarize(reads, 0);
    const list = summarize(lists, 0);
    rows.push(row(`floor: qemu-backend's listRecords alone (${recordCount} records, in the bench process)`, readFloor, readFloor));
    rows.push(row(`list-vms with ${recordCount} records → reply`, list, readFloor, {}, 'local socket; a stopped VM is told from its missing pidfile'));
    if (recordCount === 1_000) targets.push(target('list-vms with 1,000 VM records ≤ 100 ms (p50)', list.p50Ms, 100, 'ms', 'le', 'see docs/PERFORMANCE.md, finding F8'));
    else notes.push(`smoke run: ${recordCount} records instead of 1,000, no target judged`);

    // C. The sweeper's leases job over 10,000 lease lines (a dry run: it reports, changes nothing).
    const leaseLines = ctx.pick({ full: 10_000, quick: 10_000, smoke: 200 });
    const sweepLabel = `sweep-now (leases job, dry run) over ${leaseLines} lease lines`;
    const sweepState = join(ns.dir, 'sweep-vms');
    const own = await writeVmRecords(sweepState, 'shost', 0, 100, ns.bridge);
    const leaseFile = join(ns.dir, 'sweep.leases');
    await writeFile(leaseFile, leaseFileText(leaseLines, own.map((r) => r.mac), 100));
    // No `qemu` block: the sweeper follows qemu-backend's stateDir.
    const sweeper = await startNetnsAgent(scope, ns, 'shost', [
      `  - use: qemu-backend\n    options:\n      imagesDir: ${imagesDir}\n      stateDir: ${sweepState}\n      accel: tcg\n      network:\n        mode: bridge\n        bridge: ${ns.bridge}`,
      `  - use: sweeper\n    options:\n      jitterMs: 0\n      minAgeMs: 0\n      jobs:\n        leases:\n          schedule: "0 0 1 1 *"\n          action: log\n          interface: ${ns.bridge}\n          leaseFile: ${leaseFile}`,
    ]);
    const sweepOnce = async () => {
      const started = performance.now();
      ok(await sweeper.client.request(makeRequest({ type: 'sweep-now', payload: { dryRun: true, jobs: ['leases'] } })), 'sweep-now');
      return performance.now() - started;
    };
    await sweepOnce();
    const sweeps: number[] = [];
    for (let i = 0; i < ctx.pick({ full: 10, quick: 5, smoke: 1 }); i++) sweeps.push(await sweepOnce());
    const sweep = summarize(sweeps, 0);
    rows.push(row(sweepLabel, sweep, undefined, {}, '100 lines of this host\'s VMs, 100 stale (02: MACs of no VM), the rest other machines\''));
    if (leaseLines === 10_000) targets.push(target('sweep over 10,000 lease lines ≤ 200 ms (p50)', sweep.p50Ms, 200, 'ms', 'le', 'see docs/PERFORMANCE.md'));
    return {
      baseline: 'the floor of each row: QEMU alone with the same command line / reading the records alone, same run',
      columns: [
        { key: 'p50Ms', label: 'p50 ms', digits: 1 },
        { key: 'p99Ms', label: 'p99 ms', digits: 1 },
        { key: 'meanMs', label: 'mean ms', digits: 1 },
        { key: 'n', label: 'n', digits: 0 },
        { key: 'floorRatio', label: 'p50 ×floor', digits: 2 },
      ],
      rows,
      targets,
      notes,
    };
  },
};
