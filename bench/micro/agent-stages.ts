/**
 * Where one request's time goes at c=1, inside an agent and outside it, next to the bare amqplib echo that
 * keeps the same delivery guarantees (docs/PERFORMANCE.md, F17). Not part of `npm run bench`: a probe run by
 * hand, after `npm run build`:
 *
 *   node --import tsx bench/micro/agent-stages.ts [CALLS_PER_ROUND]
 *
 * Both servers run with `agent-stages-hooks.mjs` loaded (`--import`), which notes the time at which
 * amqplib hands a request to its consumer (A), the dispatcher hands it to tinypool (C), the handler thread
 * takes it and gives its result back (W), tinypool's promise settles (D), and the reply's frames are
 * written to the socket (G). The rounds alternate between the agent and the echo; each figure is the median
 * over every call of every round. "Outside" is the caller's round trip less A → G: both brokers hops, the
 * caller's own work, and the server's wake-up and frame parsing before A.
 */
import { Buffer } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { encodeEnvelope, makeRequest } from '../../core/envelope.ts';
import { deleteBrokerObjects } from '../lib/broker-objects.ts';
import { benchCloud, BROKER_URL, pluginEntry } from '../lib/cloud.ts';
import { benchTempDir } from '../lib/local.ts';
import { spawnScript, type BenchProcess } from '../lib/processes.ts';
import { RawRpcClient } from '../lib/raw-rpc.ts';
import { CleanupScope } from '../lib/scope.ts';
import { median } from '../lib/stats.ts';

const callsPerRound = Number(process.argv[2] ?? 3_000);
const ROUNDS = 3;
const WARM_UP_CALLS = 3_000;
const hooks = fileURLToPath(new URL('./agent-stages-hooks.mjs', import.meta.url));

interface StageRecord {
  A: number;
  C?: number;
  W?: [number | null, number];
  D?: number;
  G: number;
}

interface Contender {
  name: string;
  server: BenchProcess;
  out: string;
  call: () => Promise<void>;
  latenciesMs: number[];
  records: StageRecord[];
}

const scope = new CleanupScope();
// Interrupted by hand: stop the servers and delete their broker objects all the same.
process.once('SIGINT', () => void scope.close().then(() => process.exit(130)));
// Piped into `head`, stdout closes early: writing to it then fails (EPIPE), which would end the probe before
// its clean-up and leave its agent running. Its output is lost anyway; the clean-up must still run.
process.stdout.on('error', () => undefined);
let counter = 0;
try {
  const dir = await benchTempDir(scope, 'cloudlet-stages-');
  const probeEnv = (name: string) => ({ CLOUDLET_PROBE_STAGES_OUT: join(dir, `${name}.json`) });

  const cloud = await benchCloud({ scope, uniqueName: () => `bench-stages-${(counter++).toString(36)}${randomUUID().slice(0, 4)}` }, { heartbeatMs: 60_000, downAfterMs: 300_000 });
  const agent = await cloud.startAgent('t1', [pluginEntry.routingDirect(false), pluginEntry.testkit()], {
    nodeArgs: ['--import', hooks],
    env: { ...probeEnv('agent'), CLOUDLET_PROBE_TYPE: 'test.echo' },
  });
  const client = cloud.client();
  const payload = { value: 'x'.repeat(60) };

  const queue = `bench-stages-echo-${randomUUID().slice(0, 8)}`;
  scope.after(() => deleteBrokerObjects([queue]));
  const echo = spawnScript(scope, fileURLToPath(new URL('../servers/raw-guaranteed-echo-server.ts', import.meta.url)), [BROKER_URL, queue, '32', join(dir, 'outcomes.jsonl')], {
    nodeArgs: ['--import', hooks],
    env: probeEnv('echo'),
  });
  await echo.waitFor('ready');
  const rawClient = new RawRpcClient({ guaranteed: true });
  scope.after(() => rawClient.close());
  await rawClient.open(BROKER_URL);
  const rawBody = Buffer.from(encodeEnvelope(makeRequest({ type: 'test.echo', target: 't1', payload })));

  const contenders: Contender[] = [
    {
      name: 'agent',
      server: agent,
      out: probeEnv('agent').CLOUDLET_PROBE_STAGES_OUT,
      call: async () => {
        const reply = await client.request(makeRequest({ type: 'test.echo', target: 't1', payload }));
        if (!reply.ok) throw new Error(`test.echo: ${reply.error?.code}: ${reply.error?.message}`);
      },
      latenciesMs: [],
      records: [],
    },
    { name: 'guaranteed echo', server: echo, out: probeEnv('echo').CLOUDLET_PROBE_STAGES_OUT, call: () => rawClient.call(queue, rawBody), latenciesMs: [], records: [] },
  ];

  for (const contender of contenders) for (let i = 0; i < WARM_UP_CALLS; i++) await contender.call();
  for (let round = 0; round < ROUNDS; round++) {
    for (const contender of contenders) {
      contender.server.child.kill('SIGUSR1');
      await new Promise((resolve) => setTimeout(resolve, 50));
      for (let i = 0; i < callsPerRound; i++) {
        const started = performance.now();
        await contender.call();
        contender.latenciesMs.push(performance.now() - started);
      }
      contender.server.child.kill('SIGUSR2');
      await new Promise((resolve) => setTimeout(resolve, 200));
      contender.records.push(...(JSON.parse(readFileSync(contender.out, 'utf8')) as StageRecord[]));
    }
  }

  const us = (values: number[]) => (values.length === 0 ? '–' : `${(median(values) * 1_000).toFixed(0)} µs`);
  for (const { name, latenciesMs, records } of contenders) {
    const span = (from: (r: StageRecord) => number | null | undefined, to: (r: StageRecord) => number | null | undefined) =>
      records.flatMap((r) => {
        // A point the hooks could not see is null in the JSON (tinypool's Atomics mode hands tasks over
        // without the port's message event, so W's start is missing there).
        const [a, b] = [from(r), to(r)];
        return a === undefined || b === undefined || a === null || b === null ? [] : [b - a];
      });
    const inside = span((r) => r.A, (r) => r.G);
    console.log(`${name}: ${latenciesMs.length} calls, ${records.length} recorded; round trip p50 ${us(latenciesMs)}, inside (A → G) ${us(inside)}, outside ${((median(latenciesMs) - median(inside)) * 1_000).toFixed(0)} µs`);
    if (records.some((r) => r.C !== undefined)) {
      console.log(`  A → C  delivery to pool        ${us(span((r) => r.A, (r) => r.C))}`);
      console.log(`  C → W  to the handler thread   ${us(span((r) => r.C, (r) => r.W?.[0]))}`);
      console.log(`  W      in the handler thread   ${us(span((r) => r.W?.[0], (r) => r.W?.[1]))}`);
      console.log(`  W → D  back to the main thread ${us(span((r) => r.W?.[1], (r) => r.D))}`);
      console.log(`  D → G  reply to the socket     ${us(span((r) => r.D, (r) => r.G))}`);
    }
  }
} finally {
  const errors = await scope.close();
  for (const error of errors) console.error(error);
}
