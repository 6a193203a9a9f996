/** Every benchmark, in the order; `npm run bench -- --only=ID,…` picks some. */
import type { Benchmark } from './lib/context.ts';
import { rpcAgentBenchmark } from './rpc-agent.ts';
import { rpcMoleculerBenchmark } from './rpc-moleculer.ts';
import { gatherBenchmark } from './gather.ts';
import { poolDispatchBenchmark } from './pool-dispatch.ts';
import { ipDiscoveryBenchmark } from './ip-discovery.ts';
import { qemuBenchmark } from './qemu.ts';
import { idleRssBenchmark } from './idle-rss.ts';

export const benchmarks: readonly Benchmark[] = [rpcAgentBenchmark, rpcMoleculerBenchmark, gatherBenchmark, poolDispatchBenchmark, ipDiscoveryBenchmark, qemuBenchmark, idleRssBenchmark];
