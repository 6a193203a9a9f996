/**
 * Benchmark 3: broadcast-and-gather (`host-info` to every live host, AmqpClientTransport.gather) over 1, 5,
 * 10 and 20 agent processes, against one direct RPC of the same message measured alongside (same agents
 * running, same moment). Also what the agents cost at rest: memory and idle CPU.
 */
import { Buffer } from 'node:buffer';
import { fileURLToPath } from 'node:url';
import { encodeEnvelope, makeRequest } from '../core/envelope.ts';
import { benchCloud, BROKER_URL, pluginEntry, type BenchCloud } from './lib/cloud.ts';
import type { BenchContext, Benchmark } from './lib/context.ts';
import { deleteBrokerObjects } from './lib/broker-objects.ts';
import { findListeningPid, procCpuMs, spawnScript, type BenchProcess } from './lib/processes.ts';
import { RawRpcClient } from './lib/raw-rpc.ts';
import { ratio, target, type Row } from './lib/report.ts';
import { median, summarize } from './lib/stats.ts';

const MiB = 1024 * 1024;
const rawEchoServer = fileURLToPath(new URL('./servers/raw-echo-server.ts', import.meta.url));

export const gatherBenchmark: Benchmark = {
  id: '3',
  title: 'Broadcast-and-gather (host-info) over N agent processes vs one direct RPC',
  async run(ctx) {
    const hostCounts = ctx.pick({ full: [1, 5, 10, 20], quick: [1, 5, 10, 20], smoke: [1, 2] });
    const iterations = ctx.pick({ full: 40, quick: 20, smoke: 3 });
    const warmups = ctx.pick({ full: 5, quick: 3, smoke: 1 });
    // Heartbeats every 500 ms: a new host is known to the client at once (it announces itself on connect),
    // and 20 hosts' presence traffic stays small (measured below as idle CPU).
    const cloud = await benchCloud(ctx, { heartbeatMs: 500, downAfterMs: 3_000 });
    const client = cloud.client();
    const agents: BenchProcess[] = [];
    const rows: Row[] = [];
    const notes: string[] = [];
    const brokerPid = findListeningPid(Number(new URL(BROKER_URL).port || 5672));
    const hostName = (i: number) => `g${String(i + 1).padStart(2, '0')}`;
    let gatherAt10: number | undefined;
    let directAt10: number | undefined;

    for (const count of hostCounts) {
      // Start the missing agents, two at a time (2 cores: more at once only queues on the CPU).
      const startedAt = performance.now();
      while (agents.length < count) {
        const batch = Array.from({ length: Math.min(2, count - agents.length) }, (_, k) => hostName(agents.length + k));
        ctx.log(`gather: starting ${batch.join(', ')}`);
        agents.push(
          ...(await Promise.all(batch.map((host) => cloud.startAgent(host, [pluginEntry.routingDirect(false), pluginEntry.routingFanout()], ctx.agentSpawnOptions(`gather-${host}`))))),
        );
      }
      const startupMs = performance.now() - startedAt;
      const waitUntil = Date.now() + 20_000;
      while (client.registry.liveHosts('broadcast').length < count) {
        if (Date.now() > waitUntil) throw new Error(`the client sees ${client.registry.liveHosts('broadcast').length} of ${count} hosts\n${describeHosts(client, agents)}`);
        await client.hosts(200);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }

      const gatherOnce = async () => {
        const result = await client.gather(makeRequest({ type: 'host-info', payload: {}, deadline: Date.now() + 20_000 }));
        if (result.replies.length !== count || result.missing.length > 0) {
          throw new Error(`gather over ${count} hosts: ${result.replies.length} replies, missing ${result.missing.join(', ')}`);
        }
      };
      const directOnce = async () => {
        const reply = await client.request(makeRequest({ type: 'host-info', target: hostName(0), payload: {}, deadline: Date.now() + 20_000 }));
        if (!reply.ok) throw new Error(`host-info on ${hostName(0)}: ${reply.error?.code}`);
      };
      const row = await measureRound(ctx, { processes: agents, brokerPid, gatherOnce, directOnce, iterations, warmups, startupMs });
      if (count === 10) {
        gatherAt10 = row.gather.p50Ms;
        directAt10 = row.direct.p50Ms;
      }
      rows.push({ case: `${count} agent${count === 1 ? '' : 's'}: gather`, values: row.values, note: row.note });
    }

    // The floor: the same rounds over bare amqplib echo processes, each bound to one fanout exchange. What a
    // gather over N processes costs this machine with no framework at all (finding F5).
    await Promise.all(agents.map((agent) => agent.stop()));
    const floor = await measureRawFloor(ctx, { hostCounts, iterations, warmups, brokerPid });
    rows.push(...floor.rows);
    if (floor.ratioAt10 !== undefined) {
      notes.push(
        `The floor at 10 processes: bare amqplib echo servers gather at ${floor.ratioAt10.toFixed(2)}× their own direct call (the agents: ${ratio(gatherAt10, directAt10)?.toFixed(2) ?? '–'}×). The target compares the agents with themselves; this row shows how much of the ratio this machine sets by itself.`,
      );
    }
    notes.push(
      'A round is one gather plus one direct call; "agents CPU" is all agent processes together (for the raw rows, all echo servers). Idle figures are over a quiet window after the round, with heartbeats every 500 ms (the raw servers send none).',
      'Raw amqplib rows (bench/servers/raw-echo-server.ts with a fanout exchange): the client publishes once to the exchange and waits for one reply per process (bench/lib/raw-rpc.ts `gather`); the direct call goes to the first process\'s own queue. Requests are neither persistent nor confirmed, as in benchmark 1\'s raw echo: the least a gather can do.',
      'Agents are started two at a time; "startup" is the wall time to bring the count up from the previous row (each agent is a Node process; see the machine section for whether agents run dist/ or the sources).',
    );
    return {
      baseline: 'one direct RPC of host-info to one of the same agents (routing-direct), measured alternately with the gathers',
      columns: [
        { key: 'p50Ms', label: 'gather p50 ms', digits: 1 },
        { key: 'p99Ms', label: 'gather p99 ms', digits: 1 },
        { key: 'directP50Ms', label: 'direct p50 ms', digits: 1 },
        { key: 'ratioP50', label: 'gather ×direct (p50)', digits: 2 },
        { key: 'agentsCpuMsPerRound', label: 'agents (raw: servers) CPU ms/round', digits: 1 },
        { key: 'brokerCpuMsPerRound', label: 'broker CPU ms/round', digits: 1 },
        { key: 'idleCpuPct', label: 'agents idle CPU % of a core', digits: 1 },
        { key: 'brokerIdleCpuPct', label: 'broker idle CPU %', digits: 1 },
        { key: 'rssMiBEach', label: 'RSS MiB per agent (median)', digits: 0 },
        { key: 'rssMiBTotal', label: 'RSS MiB all agents', digits: 0 },
        { key: 'startupS', label: 'startup s', digits: 1 },
      ],
      rows,
      targets: hostCounts.includes(10)
        ? [
            target(
              'gather over 10 hosts ≤ 2× one direct RPC (p50)',
              ratio(gatherAt10, directAt10),
              2,
              '×',
              'le',
              `${floor.ratioAt10 === undefined ? '' : `bare amqplib echo processes gather over 10 at ${floor.ratioAt10.toFixed(2)}× their direct call in this run (the floor rows); `}see docs/PERFORMANCE.md, finding F5`,
            ),
          ]
        : [],
      notes,
    };
  },
};

interface RoundOptions {
  /** The answering processes, for their CPU and memory. */
  processes: readonly BenchProcess[];
  brokerPid: number | undefined;
  gatherOnce(): Promise<void>;
  directOnce(): Promise<void>;
  iterations: number;
  warmups: number;
  startupMs: number;
}

/** Gathers and direct calls alternating, then a quiet window for what the processes cost at rest. */
async function measureRound(ctx: BenchContext, options: RoundOptions) {
  const { processes, brokerPid, iterations } = options;
  const timed = async (call: () => Promise<void>) => {
    const started = performance.now();
    await call();
    return performance.now() - started;
  };
  // Warm-up: every agent's host-info pool starts its worker thread on the first message.
  for (let i = 0; i < options.warmups; i++) {
    await options.gatherOnce();
    await options.directOnce();
  }
  const gathers: number[] = [];
  const directs: number[] = [];
  const cpuBefore = processes.map((p) => p.cpuMs());
  const brokerBefore = brokerPid === undefined ? undefined : procCpuMs(brokerPid);
  const measuredFrom = performance.now();
  for (let i = 0; i < iterations; i++) {
    gathers.push(await timed(options.gatherOnce));
    directs.push(await timed(options.directOnce));
  }
  const measuredMs = performance.now() - measuredFrom;
  const cpuMs = processes.reduce((sum, p, i) => sum + (p.cpuMs() - (cpuBefore[i] ?? 0)), 0);
  const brokerCpuMs = brokerPid === undefined || brokerBefore === undefined ? undefined : procCpuMs(brokerPid) - brokerBefore;

  // At rest: memory and the CPU heartbeats cost, over a quiet window.
  const idleWindowMs = ctx.pick({ full: 3_000, quick: 2_000, smoke: 500 });
  const idleBefore = processes.map((p) => p.cpuMs());
  const brokerIdleBefore = brokerPid === undefined ? undefined : procCpuMs(brokerPid);
  await new Promise((resolve) => setTimeout(resolve, idleWindowMs));
  const idleCpuShare = processes.reduce((sum, p, i) => sum + (p.cpuMs() - (idleBefore[i] ?? 0)), 0) / idleWindowMs;
  const brokerIdleShare = brokerPid === undefined || brokerIdleBefore === undefined ? null : (procCpuMs(brokerPid) - brokerIdleBefore) / idleWindowMs;
  const rss = processes.map((p) => p.rssBytes() / MiB);

  const gather = summarize(gathers, 0);
  const direct = summarize(directs, 0);
  const values: Row['values'] = {
    p50Ms: gather.p50Ms,
    p99Ms: gather.p99Ms,
    directP50Ms: direct.p50Ms,
    ratioP50: ratio(gather.p50Ms, direct.p50Ms),
    agentsCpuMsPerRound: cpuMs / iterations,
    brokerCpuMsPerRound: brokerCpuMs === undefined ? null : brokerCpuMs / iterations,
    idleCpuPct: idleCpuShare * 100,
    brokerIdleCpuPct: brokerIdleShare === null ? null : brokerIdleShare * 100,
    rssMiBEach: median(rss),
    rssMiBTotal: rss.reduce((a, b) => a + b, 0),
    startupS: options.startupMs / 1000,
  };
  const note = `${iterations} gathers and ${iterations} direct calls, alternating, in ${(measuredMs / 1000).toFixed(1)} s; direct p99 ${direct.p99Ms.toFixed(1)} ms`;
  return { gather, direct, values, note };
}

/** Benchmark 3's rounds over bare amqplib echo processes (the floor), started as the agents were. */
async function measureRawFloor(ctx: BenchContext, options: { hostCounts: readonly number[]; iterations: number; warmups: number; brokerPid: number | undefined }) {
  const { scope } = ctx;
  const exchange = ctx.uniqueName();
  const queues: string[] = [];
  scope.after(() => deleteBrokerObjects(queues, [exchange]));
  const servers: BenchProcess[] = [];
  const client = new RawRpcClient();
  scope.after(() => client.close());
  await client.open(BROKER_URL);
  const body = Buffer.from(encodeEnvelope(makeRequest({ type: 'host-info', payload: {} })));
  const rows: Row[] = [];
  let ratioAt10: number | undefined;
  for (const count of options.hostCounts) {
    const startedAt = performance.now();
    while (servers.length < count) {
      const batch = Array.from({ length: Math.min(2, count - servers.length) }, () => ctx.uniqueName());
      queues.push(...batch);
      const started = batch.map((queue) => spawnScript(scope, rawEchoServer, [BROKER_URL, queue, '32', exchange]));
      await Promise.all(started.map((server) => server.waitFor('ready')));
      servers.push(...started);
    }
    const startupMs = performance.now() - startedAt;
    const firstQueue = queues[0] as string;
    const row = await measureRound(ctx, {
      processes: servers,
      brokerPid: options.brokerPid,
      gatherOnce: () => client.gather(exchange, body, count),
      directOnce: () => client.call(firstQueue, body),
      iterations: options.iterations,
      warmups: options.warmups,
      startupMs,
    });
    if (count === 10) ratioAt10 = ratio(row.gather.p50Ms, row.direct.p50Ms) ?? undefined;
    rows.push({ case: `floor: raw amqplib, ${count} echo process${count === 1 ? '' : 'es'}: gather`, values: row.values, note: row.note });
  }
  await Promise.all(servers.map((server) => server.stop()));
  return { rows, ratioAt10 };
}

/**
 * What the client knows of each host and how each agent process is doing, for the error when the client
 * does not see them all: enough to tell a silent client from dead agents from missing routes.
 */
function describeHosts(client: ReturnType<BenchCloud['client']>, agents: readonly BenchProcess[]): string {
  const known = client.registry.entries().map((e) => `${e.host}: ${e.state}, heard ${e.agoMs} ms ago, routes [${e.routes.join(', ')}]`);
  const processes = agents.map((agent) => {
    const { exitCode, signalCode } = agent.child;
    const state = exitCode === null && signalCode === null ? 'running' : `exited (${exitCode ?? signalCode})`;
    return `pid ${agent.pid}: ${state}; last output: ${agent.output().slice(-600).replace(/\s+/g, ' ')}`;
  });
  return [`client registry (${known.length}):`, ...known, 'agent processes:', ...processes].join('\n');
}
