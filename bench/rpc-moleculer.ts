/**
 * Benchmark 2: the same request/reply through Moleculer 0.14 and its AMQP transporter, what a Node user
 * would pick instead. Measured in the same interleaved rounds as benchmark 1 (one shared measurement).
 */
import type { Benchmark } from './lib/context.ts';
import { measureRpc, CONCURRENCIES } from './lib/rpc-rounds.ts';
import { ratio, target, type Row } from './lib/report.ts';
import { rpcColumns, rpcRow } from './rpc-agent.ts';

export const rpcMoleculerBenchmark: Benchmark = {
  id: '2',
  title: 'RPC round trip: Moleculer 0.14 (AMQP transporter) vs the same raw amqplib baseline',
  async run(ctx) {
    const figures = await ctx.shared('rpc', () => measureRpc(ctx));
    const rows: Row[] = [];
    for (const c of CONCURRENCIES) {
      const raw = figures.raw?.[c];
      rows.push(rpcRow(`Moleculer, TCP_NODELAY, default prefetch 1, c=${c}`, figures.moleculer?.[c], raw));
      rows.push(rpcRow(`Moleculer, TCP_NODELAY, prefetch 32, c=${c}`, figures['moleculer-prefetch32']?.[c], raw));
      rows.push(rpcRow(`Moleculer out of the box (no TCP_NODELAY), c=${c}`, figures['moleculer-out-of-the-box']?.[c], raw, 'one short round: ~40 ms a call'));
      rows.push(rpcRow(`cloudlet agent (from benchmark 1), c=${c}`, figures.agent?.[c], raw));
    }
    const agent32 = figures.agent?.[32]?.throughputPerS;
    const vsDefault = ratio(agent32, figures.moleculer?.[32]?.throughputPerS);
    const vsTuned = ratio(agent32, figures['moleculer-prefetch32']?.[32]?.throughputPerS);
    return {
      baseline: 'raw amqplib RPC echo (benchmark 1); the targets compare the agent with Moleculer directly',
      columns: rpcColumns,
      rows,
      targets: [
        target('agent throughput ≥ 1.5× Moleculer (c=32; Moleculer with TCP_NODELAY, its default prefetch 1)', vsDefault, 1.5, '×', 'ge', 'see docs/PERFORMANCE.md, findings F2–F4, F12, F14, F15 (the agent\'s own cost per call)'),
        target('agent throughput ≥ 1.5× Moleculer (c=32; stricter: Moleculer tuned to prefetch 32)', vsTuned, 1.5, '×', 'ge', 'see docs/PERFORMANCE.md, findings F2–F4, F12, F14, F15 (the agent\'s own cost per call)'),
      ],
      notes: [
        'Moleculer\'s transporter leaves Nagle on: out of the box every call waits ~40 ms (Nagle + delayed ACK). The targets use Moleculer with TCP_NODELAY (its `socketOptions`), the same setting cloudlet uses, so the comparison is of the frameworks, not of one socket flag.',
        'Moleculer runs on amqplib 2.x here (cloudlet\'s version); it declares a peer range of 0.7–0.10, and its transporter works unchanged with 2.x.',
      ],
    };
  },
};
