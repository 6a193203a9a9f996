/**
 * Benchmark 4: what the worker pool adds to a message. The same no-op handler (test.echo) on the local
 * transport, run in its worker pool (a real `cloudlet agent`) and inline (the same request path with the
 * handler called in the main thread); then the pool alone, in-process, against calling the handler.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent } from '../core/agent.ts';
import { loadHostConfig } from '../core/config/host-config.ts';
import { rawConfigFrom } from '../core/config/load.ts';
import { makeRequest } from '../core/envelope.ts';
import { silentLogger } from '../core/logger.ts';
import { LocalClientTransport } from '../core/transports/local.ts';
import { testkitPath } from './lib/cloud.ts';
import type { Benchmark } from './lib/context.ts';
import { cpuProbe } from './lib/cpu.ts';
import { InlinePools } from './lib/inline-pools.ts';
import { runLoad } from './lib/load.ts';
import { benchTempDir, socketAccepts, startLocalAgent, writeLocalConfig } from './lib/local.ts';
import { spawnScript, type BenchProcess } from './lib/processes.ts';
import { ratio, type Row } from './lib/report.ts';
import { medianOfRounds, median, type LatencySummary } from './lib/stats.ts';

const testkitEntry = `  - use: ${testkitPath}\n    options: {}`;
const ECHO = { value: 'x'.repeat(60) };

/** A row of figure `f` against the inline baseline of the same concurrency. */
function comparedRow(label: string, f: LatencySummary, inline: LatencySummary, serverCpuUs: number | null): Row {
  return {
    case: label,
    values: {
      p50Ms: f.p50Ms,
      p99Ms: f.p99Ms,
      callsPerS: f.throughputPerS,
      p50Ratio: ratio(f.p50Ms, inline.p50Ms),
      callsRatio: ratio(f.throughputPerS, inline.throughputPerS),
      addedP50Us: (f.p50Ms - inline.p50Ms) * 1000,
      serverCpuUs,
    },
  };
}

export const poolDispatchBenchmark: Benchmark = {
  id: '4',
  title: 'Pool dispatch overhead: no-op handler through the worker pool vs inline (local transport)',
  async run(ctx) {
    const { scope } = ctx;
    const dir = await benchTempDir(scope);
    const rows: Row[] = [];

    // A. Over the unix socket, each server its own process.
    const pooled = await startLocalAgent(scope, { dir, hostId: 'pooled', pluginsYaml: [testkitEntry] }, ctx.agentSpawnOptions('pool-dispatch'));
    const inlineConfig = await writeLocalConfig({ dir, hostId: 'inline', pluginsYaml: [testkitEntry] });
    const inlineServer = spawnScript(scope, fileURLToPath(new URL('./servers/inline-local-agent.ts', import.meta.url)), [inlineConfig.file]);
    await inlineServer.waitUntil(() => socketAccepts(inlineConfig.socket), 'listening', 30_000);
    const inlineClient = new LocalClientTransport({ socketPath: inlineConfig.socket, inactivityTimeoutMs: 120_000 });
    scope.after(() => inlineClient.close());

    const servers: [string, BenchProcess, LocalClientTransport][] = [
      ['inline', inlineServer, inlineClient],
      ['pool', pooled.agent, pooled.client],
    ];
    const rounds = ctx.pick({ full: 3, quick: 1, smoke: 1 });
    const calls = { 1: ctx.pick({ full: 2_000, quick: 800, smoke: 20 }), 32: ctx.pick({ full: 6_000, quick: 2_000, smoke: 64 }) };
    const measured = new Map<string, { summary: LatencySummary; cpuUs: number | null }[]>();
    for (let round = 0; round < rounds; round++) {
      for (const concurrency of [1, 32] as const) {
        for (const [name, server, client] of round % 2 === 0 ? servers : [...servers].reverse()) {
          ctx.log(`pool-dispatch: ${name} c=${concurrency} round ${round + 1}/${rounds}`);
          const probe = cpuProbe({ server: server.pid });
          const summary = await runLoad(
            async () => {
              const reply = await client.request(makeRequest({ type: 'test.echo', payload: ECHO }));
              if (!reply.ok) throw new Error(`${name}: test.echo failed: ${reply.error?.code} ${reply.error?.message}`);
            },
            {
              concurrency,
              warmupCalls: ctx.pick({ full: 300, quick: 200, smoke: 5 }),
              calls: calls[concurrency],
              minMs: ctx.pick({ full: 1_000, quick: 700, smoke: 0 }),
              onMeasureStart: () => probe.start(),
              onMeasureEnd: () => probe.stop(),
            },
          );
          const key = `${name}@${concurrency}`;
          measured.set(key, [...(measured.get(key) ?? []), { summary, cpuUs: probe.perCallUs(summary.n).server ?? null }]);
        }
      }
    }
    for (const concurrency of [1, 32] as const) {
      const figure = (name: string) => {
        const list = measured.get(`${name}@${concurrency}`) ?? [];
        const cpu = list.map((m) => m.cpuUs).filter((v): v is number => v !== null);
        return { ...medianOfRounds(list.map((m) => m.summary)), cpuUs: cpu.length ? median(cpu) : null };
      };
      const inline = figure('inline');
      const pool = figure('pool');
      rows.push(comparedRow(`local socket, handler inline, c=${concurrency}`, inline, inline, inline.cpuUs));
      rows.push(comparedRow(`local socket, worker pool (cloudlet agent), c=${concurrency}`, pool, inline, pool.cpuUs));
    }

    // B. In-process: PoolManager.run (the worker hop alone) against calling the handler.
    const inProcessDir = join(dir, 'in-process');
    const hostConfig = await loadHostConfig(
      rawConfigFrom(
        { host: { id: 'micro' }, transport: { kind: 'local', socket: join(dir, 'micro.sock') }, log: { level: 'warn' }, plugins: [{ use: testkitPath, options: {} }] },
        join(inProcessDir, 'cloudlet.yaml'),
      ),
    );
    const agent = new Agent(hostConfig, { logger: silentLogger() });
    await agent.start();
    scope.after(() => agent.stop('benchmark finished'));
    const pools = agent.pools;
    if (!pools) throw new Error('the in-process agent has no pools');
    const inlinePools = new InlinePools(hostConfig.messages, agent.host, hostConfig.plugins);
    let next = 0;
    const task = () => ({ id: `m${next++}`, type: 'test.echo', deadline: Number.POSITIVE_INFINITY, payload: ECHO });
    const microCalls = ctx.pick({ full: 5_000, quick: 2_000, smoke: 20 });
    for (const concurrency of [1, 32] as const) {
      const options = { concurrency, warmupCalls: ctx.pick({ full: 500, quick: 300, smoke: 5 }), calls: microCalls };
      const inline = await runLoad(async () => void (await inlinePools.run(task())), options);
      const pool = await runLoad(async () => {
        const outcome = await pools.run(task());
        if (!outcome.ok) throw new Error(`pool run failed: ${outcome.error.code}`);
      }, options);
      rows.push(comparedRow(`in-process, handler called inline, c=${concurrency}`, inline, inline, null));
      rows.push(comparedRow(`in-process, PoolManager.run (worker hop), c=${concurrency}`, pool, inline, null));
    }
    return {
      baseline: 'the same request path with the handler called inline (no worker hop), same concurrency, same run',
      columns: [
        { key: 'p50Ms', label: 'p50 ms', digits: 3 },
        { key: 'p99Ms', label: 'p99 ms', digits: 2 },
        { key: 'callsPerS', label: 'calls/s', digits: 0 },
        { key: 'p50Ratio', label: 'p50 ×inline', digits: 2 },
        { key: 'callsRatio', label: 'calls/s ×inline', digits: 2 },
        { key: 'addedP50Us', label: 'added p50 µs', digits: 0 },
        { key: 'serverCpuUs', label: 'server CPU µs/call', digits: 0 },
      ],
      rows,
      targets: [],
      notes: [
        'The issue sets no target for this one; it shows what the worker pool (isolation, deadlines, crash containment) costs per message. test.echo\'s pool: maxThreads 2 (the default).',
        'The inline server uses the product\'s LocalAgentTransport and Dispatcher with a PoolManager that calls the handler in the main thread (bench/lib/inline-pools.ts).',
      ],
    };
  },
};
