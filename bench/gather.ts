/**
 * Benchmark 3: broadcast-and-gather (`host-info` to every live host, AmqpClientTransport.gather) over 1, 5,
 * 10 and 20 agent processes, against one direct RPC of the same message measured alongside (same agents
 * running, same moment). Also what the agents cost at rest: memory and idle CPU.
 */
import { makeRequest } from '../core/envelope.ts';
import { benchCloud, pluginEntry } from './lib/cloud.ts';
import type { Benchmark } from './lib/context.ts';
import { findListeningPid, type BenchProcess } from './lib/processes.ts';
import { ratio, target, type Row } from './lib/report.ts';
import { median, summarize } from './lib/stats.ts';
import { BROKER_URL } from './lib/cloud.ts';
import { procCpuMs } from './lib/processes.ts';

const MiB = 1024 * 1024;

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
        if (Date.now() > waitUntil) throw new Error(`the client sees ${client.registry.liveHosts('broadcast').length} of ${count} hosts`);
        await client.hosts(200);
      }

      const gatherOnce = async () => {
        const started = performance.now();
        const result = await client.gather(makeRequest({ type: 'host-info', payload: {}, deadline: Date.now() + 20_000 }));
        const ms = performance.now() - started;
        if (result.replies.length !== count || result.missing.length > 0) {
          throw new Error(`gather over ${count} hosts: ${result.replies.length} replies, missing ${result.missing.join(', ')}`);
        }
        return ms;
      };
      const directOnce = async () => {
        const started = performance.now();
        const reply = await client.request(makeRequest({ type: 'host-info', target: hostName(0), payload: {}, deadline: Date.now() + 20_000 }));
        if (!reply.ok) throw new Error(`host-info on ${hostName(0)}: ${reply.error?.code}`);
        return performance.now() - started;
      };
      // Warm-up: every agent's host-info pool starts its worker thread on the first message.
      for (let i = 0; i < warmups; i++) {
        await gatherOnce();
        await directOnce();
      }
      const gathers: number[] = [];
      const directs: number[] = [];
      const cpuBefore = agents.map((a) => a.cpuMs());
      const brokerBefore = brokerPid === undefined ? undefined : procCpuMs(brokerPid);
      const measuredFrom = performance.now();
      for (let i = 0; i < iterations; i++) {
        gathers.push(await gatherOnce());
        directs.push(await directOnce());
      }
      const measuredMs = performance.now() - measuredFrom;
      const agentCpuMs = agents.reduce((sum, a, i) => sum + (a.cpuMs() - (cpuBefore[i] ?? 0)), 0);
      const brokerCpuMs = brokerPid === undefined || brokerBefore === undefined ? undefined : procCpuMs(brokerPid) - brokerBefore;

      // At rest: memory and the CPU heartbeats cost, over a quiet window.
      const idleWindowMs = ctx.pick({ full: 3_000, quick: 2_000, smoke: 500 });
      const idleBefore = agents.map((a) => a.cpuMs());
      const brokerIdleBefore = brokerPid === undefined ? undefined : procCpuMs(brokerPid);
      await new Promise((resolve) => setTimeout(resolve, idleWindowMs));
      const idleCpuShare = agents.reduce((sum, a, i) => sum + (a.cpuMs() - (idleBefore[i] ?? 0)), 0) / idleWindowMs;
      const brokerIdleShare = brokerPid === undefined || brokerIdleBefore === undefined ? null : (procCpuMs(brokerPid) - brokerIdleBefore) / idleWindowMs;
      const rss = agents.map((a) => a.rssBytes() / MiB);

      const gather = summarize(gathers, 0);
      const direct = summarize(directs, 0);
      if (count === 10) {
        gatherAt10 = gather.p50Ms;
        directAt10 = direct.p50Ms;
      }
      rows.push({
        case: `${count} agent${count === 1 ? '' : 's'}: gather`,
        values: {
          p50Ms: gather.p50Ms,
          p99Ms: gather.p99Ms,
          directP50Ms: direct.p50Ms,
          ratioP50: ratio(gather.p50Ms, direct.p50Ms),
          agentsCpuMsPerRound: agentCpuMs / iterations,
          brokerCpuMsPerRound: brokerCpuMs === undefined ? null : brokerCpuMs / iterations,
          idleCpuPct: idleCpuShare * 100,
          brokerIdleCpuPct: brokerIdleShare === null ? null : brokerIdleShare * 100,
          rssMiBEach: median(rss),
          rssMiBTotal: rss.reduce((a, b) => a + b, 0),
          startupS: startupMs / 1000,
        },
        note: `${iterations} gathers and ${iterations} direct calls, alternating, in ${(measuredMs / 1000).toFixed(1)} s; direct p99 ${direct.p99Ms.toFixed(1)} ms`,
      });
    }
    notes.push(
      'A round is one gather plus one direct call; "agents CPU" is all agent processes together. Idle figures are over a quiet window after the round, with heartbeats every 500 ms.',
      'Agents are started two at a time; "startup" is the wall time to bring the count up from the previous row (each agent is a Node process; see the machine section for whether agents run dist/ or the sources).',
    );
    return {
      baseline: 'one direct RPC of host-info to one of the same agents (routing-direct), measured alternately with the gathers',
      columns: [
        { key: 'p50Ms', label: 'gather p50 ms', digits: 1 },
        { key: 'p99Ms', label: 'gather p99 ms', digits: 1 },
        { key: 'directP50Ms', label: 'direct p50 ms', digits: 1 },
        { key: 'ratioP50', label: 'gather ×direct (p50)', digits: 2 },
        { key: 'agentsCpuMsPerRound', label: 'agents CPU ms/round', digits: 1 },
        { key: 'brokerCpuMsPerRound', label: 'broker CPU ms/round', digits: 1 },
        { key: 'idleCpuPct', label: 'agents idle CPU % of a core', digits: 1 },
        { key: 'brokerIdleCpuPct', label: 'broker idle CPU %', digits: 1 },
        { key: 'rssMiBEach', label: 'RSS MiB per agent (median)', digits: 0 },
        { key: 'rssMiBTotal', label: 'RSS MiB all agents', digits: 0 },
        { key: 'startupS', label: 'startup s', digits: 1 },
      ],
      rows,
      targets: hostCounts.includes(10)
        ? [target('gather over 10 hosts ≤ 2× one direct RPC (p50)', ratio(gatherAt10, directAt10), 2, '×', 'le', 'see docs/PERFORMANCE.md, finding F5')]
        : [],
      notes,
    };
  },
};
