/**
 * Benchmark 7: an agent's resident memory at rest with every built-in plugin loaded (whatever
 * plugins/builtin.ts names, each with a minimal valid configuration), on the RabbitMQ transport; then after
 * one message (one worker thread alive). The floors: Node alone, Node with tsx, and an agent with no plugin.
 * Agents run the compiled dist/ as shipped (see bench/run.ts), plus one row from the sources for comparison.
 */
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { makeRequest } from '../core/envelope.ts';
import { builtinPlugins } from '../plugins/builtin.ts';
import { deleteBrokerObjects } from './lib/broker-objects.ts';
import { benchCloud, BROKER_URL } from './lib/cloud.ts';
import type { BenchContext, Benchmark } from './lib/context.ts';
import { benchTempDir, startLocalAgent } from './lib/local.ts';
import { spawnScript, type BenchProcess } from './lib/processes.ts';
import { ratio, target, type Row } from './lib/report.ts';
import { median } from './lib/stats.ts';

const MiB = 1024 * 1024;
/** The "120 MB", read as SI megabytes (10^6 bytes): the stricter reading (120 MiB would be 125.8 MB). */
const LIMIT_MB = 120;
const MB = 1_000_000;

/** A minimal valid configuration for each built-in plugin (YAML list item); unknown ones get none. */
function pluginEntries(names: readonly string[], dir: string, prefix: string): string[] {
  const yaml: Record<string, string> = {
    'routing-direct': '  - use: routing-direct',
    'routing-fanout': '  - use: routing-fanout',
    'qemu-backend': `  - use: qemu-backend\n    options:\n      imagesDir: ${join(dir, 'images')}\n      stateDir: ${join(dir, 'vms')}\n      accel: tcg\n      network:\n        mode: none`,
    'ip-discovery-guest-agent': '  - use: ip-discovery-guest-agent',
    'ip-discovery-dnsmasq': `  - use: ip-discovery-dnsmasq\n    options:\n      leaseFile: ${join(dir, 'dnsmasq.leases')}`,
    'ip-discovery-arp': '  - use: ip-discovery-arp\n    options:\n      bridge: br0',
    'protocol-aetherscale': `  - use: protocol-aetherscale\n    options:\n      exchange: ${prefix}-computing\n      competingQueue: ${prefix}-computing-competing`,
    metrics: '  - use: metrics\n    options:\n      listen: 127.0.0.1:0',
    sweeper: `  - use: sweeper\n    options:\n      qemu:\n        stateDir: ${join(dir, 'vms')}`,
  };
  return names.map((name) => yaml[name] ?? `  - use: ${name}`);
}

/** Median RSS over a few samples, after the process has been quiet for `settleMs`. */
async function restingRss(process_: BenchProcess, settleMs: number, samples: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, settleMs));
  const values: number[] = [];
  for (let i = 0; i < samples; i++) {
    values.push(process_.rssBytes() / MiB);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return median(values);
}

async function floorProcess(ctx: BenchContext, withTsx: boolean): Promise<BenchProcess> {
  const script = fileURLToPath(new URL('./servers/idle.mjs', import.meta.url));
  const proc = spawnScript(ctx.scope, script, [], { tsx: withTsx });
  await proc.waitFor('idle');
  return proc;
}

export const idleRssBenchmark: Benchmark = {
  id: '7',
  title: 'Agent idle memory (RSS) with every built-in plugin loaded',
  async run(ctx) {
    const settleMs = ctx.pick({ full: 3_000, quick: 2_000, smoke: 300 });
    const samples = ctx.pick({ full: 3, quick: 3, smoke: 1 });
    const dir = await benchTempDir(ctx.scope);
    await mkdir(join(dir, 'images'), { recursive: true });
    const rows: Row[] = [];
    const notes: string[] = [];

    const bareNode = await restingRss(await floorProcess(ctx, false), settleMs, samples);
    const nodeTsx = await restingRss(await floorProcess(ctx, true), settleMs, samples);
    const empty = await startLocalAgent(ctx.scope, { dir, hostId: 'empty', pluginsYaml: [] });
    const emptyRss = await restingRss(empty.agent, settleMs, samples);

    const cloud = await benchCloud(ctx, { heartbeatMs: 2_000, downAfterMs: 6_000 });
    ctx.scope.after(() => deleteBrokerObjects([`${cloud.prefix}-computing-competing`], [`${cloud.prefix}-computing`]));
    // Every built-in plugin, each with a minimal valid config; one that does not start fails the benchmark.
    const names = Object.keys(builtinPlugins);
    const agent = await cloud.startAgent('rss', pluginEntries(names, dir, cloud.prefix), { ...ctx.agentSpawnOptions('idle-rss'), env: { CLOUDLET_LOG_LEVEL: 'warn' } });
    const allRss = await restingRss(agent, settleMs, samples);
    const client = cloud.client();
    const reply = await client.request(makeRequest({ type: 'host-info', target: 'rss', payload: {} }));
    if (!reply.ok) throw new Error(`host-info: ${reply.error?.code}`);
    const afterOne = await restingRss(agent, settleMs, samples);
    // For comparison, the same agent from the TypeScript sources (what a checkout runs without a build).
    let fromSources: number | undefined;
    if (process.env.CLOUDLET_FROM_SOURCE !== '1') {
      await agent.stop();
      const sourcesAgent = await cloud.startAgent('rss-src', pluginEntries(names, dir, cloud.prefix), { env: { CLOUDLET_LOG_LEVEL: 'warn', CLOUDLET_FROM_SOURCE: '1' } });
      fromSources = await restingRss(sourcesAgent, settleMs, samples);
    }

    const add = (label: string, mib: number, note?: string) =>
      rows.push({ case: label, values: { rssMiB: mib, rssMB: (mib * MiB) / MB, limitRatio: ratio((mib * MiB) / MB, LIMIT_MB), overNode: mib - bareNode }, ...(note ? { note } : {}) });
    add('floor: Node alone (an idle script)', bareNode);
    add('floor: Node + tsx loader (an idle script)', nodeTsx);
    add('agent, no plugin (core only, local socket)', emptyRss);
    add(`agent, every built-in plugin (${names.length}), RabbitMQ transport, at rest`, allRss, names.join(', '));
    add('the same, after one host-info (one worker thread alive until idleTimeoutMs)', afterOne);
    if (fromSources !== undefined) {
      add('the same at rest, run from the TypeScript sources (tsx loader; no dist/)', fromSources, 'CLOUDLET_FROM_SOURCE=1: what a checkout without `npm run build` runs');
      // The target is judged on the installed (compiled) form; say plainly when the sources alone would miss it.
      if ((fromSources * MiB) / MB > LIMIT_MB) notes.push(`Run from the TypeScript sources (a checkout without \`npm run build\`, and the test suite) the same agent idles at ${((fromSources * MiB) / MB).toFixed(0)} MB: over the ${LIMIT_MB} MB target, which is judged on the compiled form that npm pack ships.`);
    }
    notes.push('RSS of the whole process (main thread and worker threads) from /proc, the median of a few samples once it has been quiet for a while. MiB = 2^20 bytes; the target is judged in MB = 10^6 bytes, the stricter reading of "120 MB".');
    return {
      baseline: `the ${LIMIT_MB} MB target (ratios are of it, in MB); floors for what Node and the TypeScript loader take by themselves`,
      columns: [
        { key: 'rssMiB', label: 'RSS MiB', digits: 0 },
        { key: 'rssMB', label: 'RSS MB (10^6 B)', digits: 0 },
        { key: 'limitRatio', label: `×${LIMIT_MB} MB target`, digits: 2 },
        { key: 'overNode', label: 'MiB over bare Node', digits: 0 },
      ],
      rows,
      targets: [target(`agent idle RSS with every built-in plugin ≤ ${LIMIT_MB} MB (10^6 bytes)`, (allRss * MiB) / MB, LIMIT_MB, 'MB', 'le', 'see docs/PERFORMANCE.md, finding F9')],
      notes,
    };
  },
};
