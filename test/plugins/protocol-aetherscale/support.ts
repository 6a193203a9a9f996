/**
 * Test support for protocol-aetherscale: the Python client (test/aetherscale-client/client.py), a unique
 * exchange and queue per test on the shared broker (removed afterwards), and what the broker says about
 * unacknowledged messages.
 */
import { execFile, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import amqplib from 'amqplib';
import { repoRoot } from '../../helpers.ts';
import { isLocalBroker, SHARED_BROKER } from '../../support/cloud.ts';

export const BROKER_URL = SHARED_BROKER;
export const clientScript = join(repoRoot, 'test/aetherscale-client/client.py');

let python: string | undefined;

/**
 * A Python 3 that can import pika. Debian's python3-pika lives under /usr/bin/python3, which a pyenv or venv
 * `python3` earlier on PATH does not see; CLOUDLET_TEST_PYTHON overrides the search.
 */
export function pythonWithPika(): string {
  if (python) return python;
  const candidates = [process.env.CLOUDLET_TEST_PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => Boolean(c));
  for (const candidate of candidates) {
    if (spawnSync(candidate, ['-c', 'import pika'], { stdio: 'ignore' }).status === 0) return (python = candidate);
  }
  throw new Error(`no Python 3 with pika among ${candidates.join(', ')}: apt-get install python3-pika (or set CLOUDLET_TEST_PYTHON)`);
}

export interface ClientRun {
  code: number | null;
  /** Every reply, parsed (one JSON document per stdout line). */
  replies: Reply[];
  stderr: string;
}

export type Reply = {
  'execution-info': { status: 'success' | 'error'; reason?: string };
  response?: unknown;
  // With --properties:
  correlation_id?: string | null;
  content_type?: string | null;
  body?: Reply;
};

export interface Broker {
  url: string;
  exchange: string;
  competingQueue: string;
  /** Runs the client against this test's exchange: `client(['--expect', '2', 'list-vms'])`. */
  client(args: string[], options?: { url?: string }): Promise<ClientRun>;
  /**
   * Registers how to stop a host using this broker. Cleanup stops them all before deleting the queue: a host
   * still running would see its queue vanish, reconnect and declare it again (after-hooks run in the order
   * they were registered, and this one comes first).
   */
  track(stop: () => Promise<unknown>): void;
}

/** A fresh exchange and competing queue name; both are deleted when the test ends, pass or fail. */
export function uniqueBroker(t: TestContext, url = BROKER_URL): Broker {
  const suffix = randomUUID().slice(0, 8);
  const stops: (() => Promise<unknown>)[] = [];
  const broker: Broker = {
    url,
    exchange: `computing-${suffix}`,
    competingQueue: `computing-competing-${suffix}`,
    client: (args, options = {}) => runClient(['--url', options.url ?? url, '--exchange', broker.exchange, ...args]),
    track: (stop) => void stops.push(stop),
  };
  t.after(async () => {
    await Promise.allSettled(stops.map((stop) => stop()));
    await deleteTopology(url, broker.exchange, broker.competingQueue);
  });
  return broker;
}

export function runClient(args: string[]): Promise<ClientRun> {
  return new Promise((resolve, reject) => {
    execFile(pythonWithPika(), [clientScript, ...args], { timeout: 120_000, encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error && typeof (error as { code?: unknown }).code !== 'number') return reject(error);
      try {
        const replies = stdout
          .split('\n')
          .filter((line) => line.trim() !== '')
          .map((line) => JSON.parse(line) as Reply);
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, replies, stderr });
      } catch (cause) {
        reject(new Error(`client printed something that is not JSON lines:\n${stdout}\n${stderr}`, { cause }));
      }
    });
  });
}

export async function deleteTopology(url: string, exchange: string, queue: string): Promise<void> {
  const connection = await amqplib.connect(url).catch(() => undefined);
  if (!connection) return;
  try {
    for (const remove of [(ch: amqplib.Channel) => ch.deleteQueue(queue), (ch: amqplib.Channel) => ch.deleteExchange(exchange)]) {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await remove(channel).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
  } finally {
    await connection.close().catch(() => undefined);
  }
}

export async function deleteQueue(url: string, queue: string): Promise<void> {
  const connection = await amqplib.connect(url);
  try {
    await (await connection.createChannel()).deleteQueue(queue);
  } finally {
    await connection.close();
  }
}

export async function queueState(url: string, queue: string): Promise<{ messageCount: number; consumerCount: number }> {
  const connection = await amqplib.connect(url);
  connection.on('error', () => undefined);
  try {
    const channel = await connection.createChannel();
    channel.on('error', () => undefined); // a missing queue closes the channel; the rejection says so
    const { messageCount, consumerCount } = await channel.checkQueue(queue);
    return { messageCount, consumerCount };
  } finally {
    await connection.close();
  }
}

/**
 * Unacknowledged messages of every queue bound to `exchange`, from rabbitmqctl (AMQP itself does not tell);
 * undefined when rabbitmqctl cannot be used here (a remote broker, or not installed).
 */
export function unackedByQueue(exchange: string): Map<string, number> | undefined {
  // Only a broker elsewhere (CLOUDLET_TEST_AMQP_URL) is out of rabbitmqctl's reach; for the local one
  // (setup.sh starts it, as root) a failing rabbitmqctl is an error, not a reason to check less.
  const local = isLocalBroker(BROKER_URL);
  const run = (args: string[]) => {
    const result = spawnSync('rabbitmqctl', ['-q', '--formatter', 'json', ...args], { encoding: 'utf8', timeout: 30_000 });
    if (result.status !== 0 && local) throw new Error(`rabbitmqctl ${args[0]} failed (exit ${result.status}): ${result.stderr || result.error?.message}`);
    return result;
  };
  const bindings = run(['list_bindings', 'source_name', 'destination_name', 'destination_kind']);
  if (bindings.status !== 0) return undefined;
  const queues = new Set(
    (JSON.parse(bindings.stdout) as { source_name: string; destination_name: string; destination_kind: string }[])
      .filter((b) => b.source_name === exchange && b.destination_kind === 'queue')
      .map((b) => b.destination_name),
  );
  const listed = run(['list_queues', 'name', 'messages_unacknowledged']);
  if (listed.status !== 0) return undefined;
  const result = new Map<string, number>();
  for (const q of JSON.parse(listed.stdout) as { name: string; messages_unacknowledged: number }[]) {
    if (queues.has(q.name)) result.set(q.name, q.messages_unacknowledged);
  }
  return result;
}

/** Waits (the last ack may trail the last reply by a moment) until no queue of `exchange` holds an unacked message. */
export async function expectNoUnacked(exchange: string, timeoutMs = 5_000): Promise<Map<string, number> | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const unacked = unackedByQueue(exchange);
    if (unacked === undefined) return undefined;
    if ([...unacked.values()].every((n) => n === 0) || Date.now() > deadline) return unacked;
    await new Promise((r) => setTimeout(r, 200));
  }
}

export const isError = (reply: Reply | undefined) => reply?.['execution-info'].status === 'error';
export const reasonOf = (reply: Reply | undefined) => reply?.['execution-info'].reason ?? '';
export const responseOf = <T>(reply: Reply | undefined): T => {
  if (reply?.['execution-info'].status !== 'success') throw new Error(`expected a success reply, got ${JSON.stringify(reply)}`);
  return reply.response as T;
};
