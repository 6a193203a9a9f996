import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import test, { type TestContext } from 'node:test';
import amqplib from 'amqplib';
import { startRabbitNode } from './rabbit-node.ts';

/** pids whose command line names the node (what `pgrep -f` sees: beam). */
function pgrep(name: string): number[] {
  const result = spawnSync('pgrep', ['-f', name], { encoding: 'utf8' });
  return result.stdout.split('\n').filter(Boolean).map(Number).filter((pid) => pid !== process.pid);
}

/** pids whose environment names the node: also catches its epmd, whose command line does not. */
function processesWithNodeEnv(name: string): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(`RABBITMQ_NODENAME=${name}`);
      } catch {
        return false; // exited meanwhile
      }
    })
    .map(Number);
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Runs action and reports how long it took as a test diagnostic. */
async function timed<T>(t: TestContext, what: string, action: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const result = await action();
  t.diagnostic(`${what}: ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return result;
}

test('rabbit node — a persistent message survives restart(), stop() closes the port and leaves no processes', async (t) => {
  const node = await timed(t, 'start', () => startRabbitNode(t, { name: 'selftest' }));
  assert.notEqual(node.port, 5672);
  assert.equal(node.url, `amqp://guest:guest@127.0.0.1:${node.port}`);
  assert.ok(pgrep(node.name).length > 0, 'pgrep -f finds the running node');

  const queue = 'rabbit-node-selftest';
  const before = await amqplib.connect(node.url, { noDelay: true });
  const publisher = await before.createConfirmChannel();
  await publisher.assertQueue(queue, { durable: true });
  publisher.sendToQueue(queue, Buffer.from('still here'), { persistent: true });
  await publisher.waitForConfirms();
  await before.close();

  await timed(t, 'restart', () => node.restart());

  const after = await amqplib.connect(node.url, { noDelay: true });
  t.after(() => after.close().catch(() => undefined));
  const consumer = await after.createChannel();
  const message = await consumer.get(queue, { noAck: true });
  assert.ok(message, 'the message is still in the queue after restart');
  assert.equal(message.content.toString(), 'still here');
  await after.close();

  await timed(t, 'stop', () => node.stop());
  assert.equal(await portOpen(node.port), false, 'AMQP port closed after stop');
  assert.deepEqual(pgrep(node.name), [], 'no process of the node left (pgrep -f)');
  assert.deepEqual(processesWithNodeEnv(node.name), [], 'no process with the node in its environment (beam, epmd)');
  await node.stop(); // stopping twice is harmless
});

test('rabbit node — cleanup stops a node the test left running', async (t) => {
  let name = '';
  let port = 0;
  await t.test('inner test that never stops its node', async (inner) => {
    const node = await startRabbitNode(inner);
    name = node.name;
    port = node.port;
  });
  assert.ok(name, 'the inner test started a node');
  assert.equal(await portOpen(port), false, 'AMQP port closed by cleanup');
  assert.deepEqual(pgrep(name), []);
  assert.deepEqual(processesWithNodeEnv(name), []);
});
