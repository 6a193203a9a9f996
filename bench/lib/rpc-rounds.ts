/**
 * The request/reply measurement behind benchmarks 1 and 2: raw amqplib, a cloudlet agent and Moleculer
 * servers, each its own process on the same broker, driven from this process in interleaved rounds (so a
 * burst of background load hits every contender alike). Each figure is the median over rounds.
 */
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeEnvelope, makeRequest } from '../../core/envelope.ts';
import { deleteBrokerObjects } from './broker-objects.ts';
import { benchCloud, pluginEntry, BROKER_URL } from './cloud.ts';
import { cpuProbe } from './cpu.ts';
import { benchTempDir } from './local.ts';
import { runLoad } from './load.ts';
import { ServiceBroker, moleculerBrokerObjects, moleculerBrokerOptions, type MoleculerTransportSettings } from './moleculer.ts';
import { findListeningPid, spawnScript, type BenchProcess } from './processes.ts';
import { RawRpcClient } from './raw-rpc.ts';
import type { BenchContext } from './context.ts';
import { median, medianOfRounds, type LatencySummary } from './stats.ts';

export const CONCURRENCIES = [1, 32] as const;
export type Concurrency = (typeof CONCURRENCIES)[number];

export type Contender =
  | 'raw'
  | 'raw-guaranteed'
  | 'agent'
  | 'agent-one-per-thread'
  | 'agent-any'
  | 'agent-past-history'
  | 'moleculer'
  | 'moleculer-prefetch32'
  | 'moleculer-out-of-the-box';

/** The agent transport's default `outcomeHistory`: outcomes kept to answer redelivered requests. */
const OUTCOME_HISTORY = 10_000;

export interface RpcFigure extends LatencySummary {
  rounds: number;
  throughputRange: [number, number];
  /** CPU µs per call: client (this process), server (the contender's process), broker. */
  cpuUs: Record<string, number | null>;
}

export type RpcFigures = Partial<Record<Contender, Partial<Record<Concurrency, RpcFigure>>>>;

const serverScript = (name: string) => fileURLToPath(new URL(`../servers/${name}`, import.meta.url));

/** The echoed value: with the envelope around it, a request of ~180 bytes on the wire for every contender. */
const ECHO_VALUE = 'x'.repeat(60);

interface Driver {
  contender: Contender;
  /** The server process measured in a round. */
  server(round: number): BenchProcess;
  call(round: number): Promise<void>;
  /** Fewer calls (it is slow): Moleculer without TCP_NODELAY answers in ~40 ms. */
  slow?: boolean;
  /** A server of its own in each round (the agents: see below). */
  perRound?: boolean;
}

export async function measureRpc(ctx: BenchContext): Promise<RpcFigures> {
  const { scope } = ctx;
  const drivers: Driver[] = [];

  // 1. raw amqplib: echo server process + direct reply-to client.
  const rawQueue = ctx.uniqueName();
  scope.after(() => deleteBrokerObjects([rawQueue]));
  const rawServer = spawnScript(scope, serverScript('raw-echo-server.ts'), [BROKER_URL, rawQueue, '32']);
  const rawClient = new RawRpcClient();
  scope.after(() => rawClient.close());

  // 1b. raw amqplib keeping the agent's delivery guarantees (bench/servers/raw-guaranteed-echo-server.ts).
  const guaranteedQueue = ctx.uniqueName();
  scope.after(() => deleteBrokerObjects([guaranteedQueue]));
  const guaranteedDir = await benchTempDir(scope, 'cloudlet-bench-outcomes-');
  const guaranteedServer = spawnScript(scope, serverScript('raw-guaranteed-echo-server.ts'), [
    BROKER_URL,
    guaranteedQueue,
    '32',
    join(guaranteedDir, 'outcomes.jsonl'),
  ]);
  const guaranteedClient = new RawRpcClient({ guaranteed: true });
  scope.after(() => guaranteedClient.close());

  // 2. cloudlet agents: routing-direct, the testkit's test.echo in its worker pool. One agent per round: an
  // agent that has answered `outcomeHistory` (10,000) requests behaves differently (finding F0), so each
  // round measures a fresh one, and one more row measures an agent past that point.
  const rounds = ctx.pick({ full: 3, quick: 1, smoke: 1 });
  const cloud = await benchCloud(ctx, { heartbeatMs: 1_000, downAfterMs: 5_000 });
  const agents: BenchProcess[] = [];
  // The same, with test.echo's pool at one message per thread (the core's default for a type that declares
  // nothing; the testkit declares 16 for its no-op echo): what finding F12 changed.
  const strictAgents: BenchProcess[] = [];
  const onePerThread = 'pools:\n  test.echo:\n    tasksPerThread: 1\n';
  for (let round = 0; round < rounds; round++) {
    agents.push(await cloud.startAgent(`b${round + 1}`, [pluginEntry.routingDirect(false), pluginEntry.testkit()], ctx.agentSpawnOptions(`rpc-agent-b${round + 1}`)));
    strictAgents.push(
      await cloud.startAgent(`s${round + 1}`, [pluginEntry.routingDirect(false), pluginEntry.testkit()], ctx.agentSpawnOptions(`rpc-agent-s${round + 1}`), onePerThread),
    );
  }
  const client = cloud.client();
  const echoOn = (host: string) => async () => {
    const reply = await client.request(makeRequest({ type: 'test.echo', target: host, payload: { value: ECHO_VALUE } }));
    if (!reply.ok) throw new Error(`agent ${host} answered test.echo with ${reply.error?.code}: ${reply.error?.message}`);
  };

  await rawServer.waitFor('ready');
  await rawClient.open(BROKER_URL);
  const rawBody = Buffer.from(encodeEnvelope(makeRequest({ type: 'test.echo', target: 'b1', payload: { value: ECHO_VALUE } })));
  drivers.push({ contender: 'raw', server: () => rawServer, call: () => rawClient.call(rawQueue, rawBody) });
  await guaranteedServer.waitFor('ready');
  await guaranteedClient.open(BROKER_URL);
  drivers.push({ contender: 'raw-guaranteed', server: () => guaranteedServer, call: () => guaranteedClient.call(guaranteedQueue, rawBody) });
  drivers.push({ contender: 'agent', perRound: true, server: (round) => agents[round] as BenchProcess, call: (round) => echoOn(`b${round + 1}`)() });
  drivers.push({ contender: 'agent-one-per-thread', perRound: true, server: (round) => strictAgents[round] as BenchProcess, call: (round) => echoOn(`s${round + 1}`)() });

  // 2b. The same agent, the request sent as an any-host one: through P.any, and run only once the broker has
  // confirmed the agent's "accepted" (PROTOCOL.md 11.11, step 5). A cloud of its own per round, so that one
  // agent consumes P.any.
  const anyHosts: { agent: BenchProcess; client: ReturnType<typeof cloud.client> }[] = [];
  for (let round = 0; round < rounds; round++) {
    const anyCloud = await benchCloud(ctx, { heartbeatMs: 1_000, downAfterMs: 5_000 });
    const agent = await anyCloud.startAgent(`a${round + 1}`, [pluginEntry.routingDirect(true), pluginEntry.testkit()], ctx.agentSpawnOptions(`rpc-agent-a${round + 1}`));
    anyHosts.push({ agent, client: anyCloud.client() });
  }
  const echoAny = async (round: number) => {
    const reply = await (anyHosts[round] as (typeof anyHosts)[number]).client.request(makeRequest({ type: 'test.echo', payload: { value: ECHO_VALUE } }));
    if (!reply.ok) throw new Error(`agent a${round + 1} answered an any-host test.echo with ${reply.error?.code}: ${reply.error?.message}`);
  };
  drivers.push({ contender: 'agent-any', perRound: true, server: (round) => (anyHosts[round] as (typeof anyHosts)[number]).agent, call: echoAny });

  // 3. Moleculer: each configuration its own namespace, server process and client node.
  const moleculerConfigs: [Contender, MoleculerTransportSettings][] = [
    ['moleculer', { noDelay: true }],
    ['moleculer-prefetch32', { noDelay: true, prefetch: 32 }],
    ['moleculer-out-of-the-box', { noDelay: false }],
  ];
  for (const [contender, settings] of moleculerConfigs) {
    const namespace = ctx.uniqueName();
    const objects = moleculerBrokerObjects(namespace, ['server', 'client'], ['echo.echo']);
    scope.after(() => deleteBrokerObjects(objects.queues, objects.exchanges));
    const server = spawnScript(scope, serverScript('moleculer-echo-server.ts'), [BROKER_URL, namespace, 'server', JSON.stringify(settings)]);
    const broker = new ServiceBroker(moleculerBrokerOptions(BROKER_URL, namespace, 'client', settings));
    scope.after(() => broker.stop());
    await server.waitFor('ready');
    await broker.start();
    await broker.waitForServices('echo', 30_000);
    drivers.push({
      contender,
      server: () => server,
      slow: !settings.noDelay,
      call: async () => {
        await broker.call('echo.echo', { value: ECHO_VALUE });
      },
    });
  }

  const brokerPid = findListeningPid(Number(new URL(BROKER_URL).port || 5672));
  const calls = { 1: ctx.pick({ full: 600, quick: 400, smoke: 10 }), 32: ctx.pick({ full: 3_000, quick: 1_500, smoke: 64 }) };
  const warmup = ctx.pick({ full: 200, quick: 150, smoke: 5 });
  // A fast contender (raw amqplib does ~14,000 calls/s at c=32) is measured for at least this long too.
  const minMs = ctx.pick({ full: 1_000, quick: 700, smoke: 0 });
  // Warm every server before any round: JIT tiers, worker threads, caches. A fresh agent needs thousands of
  // calls before its cost per call settles (measured: ~2x slower over its first 2,000), raw amqplib far fewer;
  // all get the same.
  const prewarm = ctx.pick({ full: 2_000, quick: 2_000, smoke: 20 });
  for (const driver of drivers.filter((d) => !d.slow)) {
    for (let round = 0; round < (driver.perRound ? rounds : 1); round++) {
      ctx.log(`rpc: warming ${driver.contender}${driver.perRound ? ` round ${round + 1}` : ''} with ${prewarm} calls`);
      await runLoad(() => driver.call(round), { concurrency: 32, warmupCalls: 0, calls: prewarm, maxMs: 60_000 });
    }
  }
  const perRound = new Map<string, { summary: LatencySummary; cpu: Record<string, number | null> }[]>();
  for (let round = 0; round < rounds; round++) {
    // Rotate the order each round so no contender always runs right after the same neighbour.
    const ordered = drivers.map((_, i) => drivers[(i + round) % drivers.length] as Driver);
    for (const concurrency of CONCURRENCIES) {
      for (const driver of ordered) {
        if (driver.slow && round > 0) continue;
        const probe = cpuProbe({ server: driver.server(round).pid, broker: brokerPid });
        ctx.log(`rpc: ${driver.contender} c=${concurrency} round ${round + 1}/${rounds}`);
        const summary = await runLoad(() => driver.call(round), {
          concurrency,
          warmupCalls: driver.slow ? 2 : warmup,
          // Moleculer without TCP_NODELAY takes ~40 ms a call: a short round is enough to show it.
          calls: driver.slow ? concurrency * 2 : calls[concurrency],
          minMs: driver.slow ? 0 : minMs,
          maxMs: ctx.pick({ full: 20_000, quick: 10_000, smoke: 5_000 }),
          onMeasureStart: () => probe.start(),
          onMeasureEnd: () => probe.stop(),
        });
        const key = `${driver.contender}@${concurrency}`;
        perRound.set(key, [...(perRound.get(key) ?? []), { summary, cpu: probe.perCallUs(summary.n) }]);
      }
    }
  }

  // An agent past its outcome history: push the first one beyond 10,000 answered requests, then measure.
  if (ctx.mode !== 'smoke') {
    const answered = prewarm + calls[1] + calls[32] + 2 * warmup;
    const push = Math.max(0, OUTCOME_HISTORY + 500 - answered);
    ctx.log(`rpc: ${push} more requests to agent b1 to fill its outcome history`);
    await runLoad(echoOn('b1'), { concurrency: 32, warmupCalls: 0, calls: push, maxMs: 120_000 });
    const probe = cpuProbe({ server: agents[0]?.pid, broker: brokerPid });
    const summary = await runLoad(echoOn('b1'), {
      concurrency: 32,
      warmupCalls: 0,
      calls: ctx.pick({ full: 600, quick: 400, smoke: 0 }),
      minMs,
      maxMs: 30_000,
      onMeasureStart: () => probe.start(),
      onMeasureEnd: () => probe.stop(),
    });
    perRound.set('agent-past-history@32', [{ summary, cpu: probe.perCallUs(summary.n) }]);
  }

  const figures: RpcFigures = {};
  for (const contender of [...drivers.map((d) => d.contender), 'agent-past-history' as const]) {
    for (const concurrency of CONCURRENCIES) {
      const measured = perRound.get(`${contender}@${concurrency}`) ?? [];
      if (measured.length === 0) continue;
      const cpuUs: Record<string, number | null> = {};
      for (const who of ['client', 'server', 'broker']) {
        const values = measured.map((m) => m.cpu[who]).filter((v): v is number => typeof v === 'number');
        cpuUs[who] = values.length === 0 ? null : median(values);
      }
      (figures[contender] ??= {})[concurrency] = { ...medianOfRounds(measured.map((m) => m.summary)), cpuUs };
    }
  }
  return figures;
}
