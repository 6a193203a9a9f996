/**
 * Where an agent's CPU per call goes, thread by thread, and how often each thread went to sleep per call
 * (voluntary context switches from /proc): one compiled `cloudlet agent` answering the testkit's no-op
 * `test.echo` over RabbitMQ, closed loops at concurrency 1 and 32 (docs/PERFORMANCE.md, F15). Not part of
 * `npm run bench`: a probe run by hand, after `npm run build`:
 *
 *   node --import tsx bench/micro/agent-threads.ts [CALLS]
 *
 * The main thread is the one whose id is the process id; the others are listed by id (on Node 20 they all
 * carry the name "node": the handler threads are the ones that wake about once per call at c=1, V8's
 * platform threads the ones that wake only for garbage collection and compilation).
 */
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import process from 'node:process';
import { makeRequest } from '../../core/envelope.ts';
import { benchCloud, pluginEntry } from '../lib/cloud.ts';
import { CleanupScope } from '../lib/scope.ts';

const CLOCK_TICK_MS = 10;
const calls = Number(process.argv[2] ?? 6_000);
const WARM_UP_CALLS = 3_000;

interface ThreadReading {
  cpuMs: number;
  voluntarySwitches: number;
}

/** CPU and voluntary context switches of every thread of `pid`, by thread id. */
function readThreads(pid: number): Map<string, ThreadReading> {
  const threads = new Map<string, ThreadReading>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      // utime and stime are fields 14 and 15; count from after the parenthesised name, which may hold spaces.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      threads.set(tid, {
        cpuMs: (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS,
        voluntarySwitches: Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(status)?.[1] ?? 0),
      });
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return threads;
}

const scope = new CleanupScope();
// Interrupted by hand: stop the agent and delete its broker objects all the same.
process.once('SIGINT', () => void scope.close().then(() => process.exit(130)));
// Piped into `head`, stdout closes early: writing to it then fails (EPIPE), which would end the probe before
// its clean-up and leave its agent running. Its output is lost anyway; the clean-up must still run.
process.stdout.on('error', () => undefined);
let counter = 0;
try {
  const cloud = await benchCloud({ scope, uniqueName: () => `bench-threads-${(counter++).toString(36)}${randomUUID().slice(0, 4)}` }, { heartbeatMs: 1_000, downAfterMs: 5_000 });
  const agent = await cloud.startAgent('t1', [pluginEntry.routingDirect(false), pluginEntry.testkit()]);
  const client = cloud.client();
  const echo = async () => {
    const reply = await client.request(makeRequest({ type: 'test.echo', target: 't1', payload: { value: 'x'.repeat(60) } }));
    if (!reply.ok) throw new Error(`test.echo: ${reply.error?.code}: ${reply.error?.message}`);
  };
  for (let i = 0; i < WARM_UP_CALLS; i++) await echo();

  for (const concurrency of [1, 32]) {
    const before = readThreads(agent.pid);
    const started = performance.now();
    let sent = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (sent++ < calls) await echo();
      }),
    );
    const elapsedMs = performance.now() - started;
    const rows = [...readThreads(agent.pid)].map(([tid, now]) => {
      const then = before.get(tid) ?? { cpuMs: 0, voluntarySwitches: 0 };
      return { tid, cpuUs: ((now.cpuMs - then.cpuMs) * 1_000) / calls, sleeps: (now.voluntarySwitches - then.voluntarySwitches) / calls };
    });
    const totalUs = rows.reduce((sum, row) => sum + row.cpuUs, 0);
    console.log(`c=${concurrency}: ${((calls / elapsedMs) * 1_000).toFixed(0)} calls/s, agent ${totalUs.toFixed(0)} µs of CPU per call`);
    for (const row of rows.sort((a, b) => b.cpuUs - a.cpuUs).filter((r) => r.cpuUs > 0 || r.sleeps >= 0.05)) {
      const label = row.tid === String(agent.pid) ? 'main thread' : `thread ${row.tid}`;
      console.log(`  ${label.padEnd(14)} ${row.cpuUs.toFixed(0).padStart(5)} µs/call  ${row.sleeps.toFixed(2)} sleeps/call`);
    }
  }
} finally {
  const errors = await scope.close();
  for (const error of errors) console.error(error);
}
