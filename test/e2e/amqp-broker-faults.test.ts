/**
 * Faults of the broker and the connection (a restart, its limits and refusals, a cut or stalled connection,
 * resource alarms). Split from amqp-faults.test.ts, which took about 220 s alone and passed the runner's
 * per-file limit (300 s) on a loaded machine.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import test from 'node:test';
import amqplib from 'amqplib';
import { makeEvent, makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import type { CloudletError } from '../../core/errors.ts';
import { amqpNames } from '../../core/transports/amqp/names.ts';
import { runCli, tempDir, until, writeConfig } from '../helpers.ts';
import { queueDepth, SHARED_BROKER, startCloud } from '../support/cloud.ts';
import { startRabbitNode } from '../support/rabbit-node.ts';
import { handledCount, rawRequest, replyQueue } from '../support/raw-amqp.ts';

test('broker restart — a client subscribed to events keeps receiving them after it reconnects', async (t) => {
  const node = await startRabbitNode(t);
  const cloud = await startCloud(t, [{ id: 'h1' }], { url: node.url });
  const client = cloud.client({ inactivityTimeoutMs: 60_000 });
  const received: string[] = [];
  await client.subscribe((event) => received.push(event.type));
  await client.subscribe((event) => received.push(`again:${event.type}`)); // two listeners, one consumer
  const publishEvent = async (type: string) => {
    const connection = await amqplib.connect(node.url);
    try {
      const channel = await connection.createConfirmChannel();
      const event = makeEvent(type, 'h1', {});
      channel.publish(amqpNames(cloud.prefix).eventsExchange, type, Buffer.from(JSON.stringify(event)), { contentType: 'application/json' });
      await channel.waitForConfirms();
    } finally {
      await connection.close();
    }
  };
  const waitFor = async (what: string) => {
    const deadline = Date.now() + 30_000;
    while (!received.includes(what) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(received.includes(what), `${what} not received: ${JSON.stringify(received)}`);
  };
  await publishEvent('test.before');
  await waitFor('test.before');
  assert.deepEqual(received.sort(), ['again:test.before', 'test.before']);
  await node.restart();
  // The client reconnects by itself; its events queue (exclusive) went with the old connection.
  const deadline = Date.now() + 30_000;
  while (!received.includes('test.after') && Date.now() < deadline) {
    await publishEvent('test.after').catch(() => undefined);
    await new Promise((r) => setTimeout(r, 500));
  }
  await waitFor('test.after');
});

test('broker limits — a broker max_message_size below limits.maxMessageBytes: an oversize reply is answered MESSAGE_TOO_LARGE without a reconnect and runs once; an oversize request fails after one', async (t) => {
  const node = await startRabbitNode(t, { name: 'max-size', conf: 'max_message_size = 65536\n' });
  // limits.maxMessageBytes: 1 MiB. A long downAfterMs: the agents' silence watch must not reconnect them
  // (heartbeats late beside a broker node of the test's own), since the test counts reconnects.
  const cloud = await startCloud(t, [{ id: 'h1' }, { id: 'h2' }], { url: node.url, routingAny: ['test.blob'], downAfterMs: 30_000 });
  const client = cloud.client({ inactivityTimeoutMs: 20_000 });
  const restarts = () => [...cloud.agents.values()].map((agent) => agent.output().match(/connecting to the broker again/g)?.length ?? 0);
  // A small any-host request whose reply (~100 kB) the broker refuses. Had that closed the channel the
  // request came in on, it would go back to the queue and run again on the other host.
  const blob = makeRequest({ type: 'test.blob', payload: { bytes: 100_000 }, deadline: Date.now() + 20_000 });
  const reply = await client.request(blob);
  assert.equal(reply.error?.code, 'MESSAGE_TOO_LARGE', JSON.stringify(reply.error));
  assert.match(reply.error?.message ?? '', /the reply would be \d+ bytes; the broker refuses messages over 65536 bytes \(its max_message_size\)/);
  const ran = [...cloud.agents.values()].reduce((sum, agent) => sum + handledCount(agent.output(), blob.id), 0);
  assert.equal(ran, 1, 'the handler ran once');
  const host = cloud.agents.get(reply.host)!;
  assert.match(host.output(), /the broker refuses messages over 65536 bytes \(its max_message_size\), less than limits.maxMessageBytes \(1048576\)/);
  assert.deepEqual(restarts(), [0, 0], 'no host reconnected');
  // Known now: the next one is answered without asking the broker; a reply within the limit still goes.
  assert.equal((await client.request(makeRequest({ type: 'test.blob', target: reply.host, payload: { bytes: 90_000 } }))).error?.code, 'MESSAGE_TOO_LARGE');
  assert.equal((await client.request(makeRequest({ type: 'test.blob', target: reply.host, payload: { bytes: 60_000 } }))).ok, true);
  // A request the broker refuses closes the client's channel (direct reply-to needs requests on the channel
  // that consumes the replies); after one reconnect the client fails it instead of publishing it again.
  // First a broadcast (a gather must fail too, not end with no replies), then a direct request.
  await assert.rejects(client.gather(makeRequest({ type: 'host-info', payload: { pad: 'x'.repeat(80_000) }, deadline: Date.now() + 20_000 })), {
    code: 'MESSAGE_TOO_LARGE',
  });
  await assert.rejects(
    client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 'x'.repeat(80_000) }, deadline: Date.now() + 20_000 })),
    (error: unknown) => {
      assert.equal((error as { code?: string }).code, 'MESSAGE_TOO_LARGE');
      assert.match(String(error), /the limit is 65536 \(the broker's max_message_size\)/);
      return true;
    },
  );
  assert.equal((await client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 'small' } }))).ok, true, 'the client goes on');
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  assert.deepEqual(restarts(), [0, 0], 'still no host reconnected');
});

test('broker limits — a learned broker limit is forgotten once the broker comes back with a higher one', async (t) => {
  const node = await startRabbitNode(t, { name: 'max-size-raised', conf: 'max_message_size = 65536\n' });
  const cloud = await startCloud(t, [{ id: 'h1' }], { url: node.url });
  const client = cloud.client({ inactivityTimeoutMs: 60_000 });
  const blob = () => client.request(makeRequest({ type: 'test.blob', target: 'h1', payload: { bytes: 100_000 }, deadline: Date.now() + 20_000 }));
  const bigEcho = () => client.request(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 'x'.repeat(80_000) }, deadline: Date.now() + 20_000 }));
  assert.equal((await blob()).error?.code, 'MESSAGE_TOO_LARGE', 'the agent learns the limit');
  await assert.rejects(bigEcho(), { code: 'MESSAGE_TOO_LARGE' }, 'the client learns it');
  await node.reconfigure(''); // RabbitMQ's default again (128 MiB on 3.x, 16 MiB on 4.x)
  await node.restart();
  let echoed: ReplyEnvelope | undefined;
  const deadline = Date.now() + 30_000;
  while (!echoed?.ok && Date.now() < deadline) echoed = await bigEcho().catch(() => undefined);
  assert.equal(echoed?.ok, true, 'the client sends an 80 kB request again');
  const reply = await blob();
  assert.equal(reply.ok, true, `the agent sends a 100 kB reply again: ${JSON.stringify(reply.error)}`);
});

test('broker refusals — a reply the broker nacks (its reply queue rejects publishes) is given up and the request acked: no reconnect, no retry', async (t) => {
  // A long downAfterMs: the test counts reconnects, and the silence watch must not add one under load.
  const cloud = await startCloud(t, [{ id: 'h1' }], { downAfterMs: 30_000 });
  const agent = cloud.agents.get('h1')!;
  const connection = await amqplib.connect(cloud.url);
  t.after(() => connection.close());
  const channel = await connection.createChannel();
  const { queue: full } = await channel.assertQueue('', { exclusive: true, arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
  const id = randomUUID();
  channel.publish(amqpNames(cloud.prefix).directExchange, 'h1', Buffer.from(JSON.stringify(makeRequest({ id, type: 'test.echo', target: 'h1', payload: {} }))), {
    messageId: id,
    replyTo: full,
    persistent: true,
    contentType: 'application/json',
  });
  await until(() => /the broker refused the reply \(nack\)/.test(agent.output()), 10_000);
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  const output = agent.output();
  assert.equal(output.match(/the broker refused the reply \(nack\)/g)?.length, 1, 'given up once, not retried');
  assert.doesNotMatch(output, /connecting to the broker again/);
  // Its outcome was kept: asked again with the same id, it is answered from there, not run again.
  const again = await rawRequest(cloud.url, cloud.prefix, 'h1', id, 'test.echo', {});
  assert.equal(again.ok, true);
  assert.equal(handledCount(agent.output(), id), 1);
});

/**
 * A TCP relay to the shared broker that cuts, once, the connection that sends `marker` towards the broker,
 * before that data gets through: the agent's reply is then lost with its connection.
 */
async function cuttingRelay(marker: string): Promise<{ url: string; cuts: () => number; close: () => Promise<void> }> {
  const broker = new URL(SHARED_BROKER);
  const sockets = new Set<Socket>();
  let cuts = 0;
  const server = createServer((client) => {
    const upstream = createConnection(Number(broker.port || 5672), broker.hostname);
    sockets.add(client).add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk: Buffer) => {
      if (cuts === 0 && chunk.includes(marker)) {
        cuts++;
        end();
        return;
      }
      upstream.write(chunk);
    });
    upstream.pipe(client);
    for (const socket of [client, upstream]) {
      socket.on('error', end);
      socket.on('close', end);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `amqp://${broker.username}:${broker.password}@127.0.0.1:${port}`,
    cuts: () => cuts,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test('redelivery — a reply cut off with its connection is sent again once connected, though its request outlived its broker TTL', { timeout: 60_000 }, async (t) => {
  // Before, the agent left it to the broker's redelivery, answered from the stored outcome; but a request
  // without a deadline has the client's patience as its TTL (4 s here), and this one ran 6 s: it went to the
  // dead-letter queue instead, and the caller got CLIENT_TIMEOUT for work that was done.
  const relay = await cuttingRelay('"slept"');
  // Nothing here waits for a host to be judged down; h1 reconnecting through the relay may take a while.
  const cloud = await startCloud(t, [{ id: 'h1' }], { url: relay.url, downAfterMs: 15_000 });
  t.after(() => relay.close()); // after the cloud's own clean-up, which goes through the relay
  const client = cloud.client({ inactivityTimeoutMs: 4_000 });
  const reply = await client.request(makeRequest({ type: 'test.sleep', target: 'h1', payload: { ms: 6_000 } }));
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  assert.deepEqual(reply.result, { slept: 6_000 });
  assert.equal(relay.cuts(), 1, 'the first reply was cut off with its connection');
  assert.match(cloud.agents.get('h1')!.output(), /reply not confirmed; sending it again once connected/);
});

test('stall — any-host requests found in the socket of a host that stalled past the broker heartbeat are not run there: the host they were handed to ran them', { timeout: 180_000 }, async (t) => {
  // From an operator walkthrough: an agent stopped for ~25 s (SIGSTOP) ran, once resumed, a create the broker
  // had meanwhile given to another host: two VMs from one request, and the CLI saw one. A 1 s AMQP heartbeat
  // here, so that the broker drops the stalled connection after a few seconds rather than twenty.
  // The 1 s heartbeat for h1 alone: the others would be dropped by an event-loop stall of ~2 s on a loaded box.
  const url = `${SHARED_BROKER}${SHARED_BROKER.includes('?') ? '&' : '?'}heartbeat=1`;
  const cloud = await startCloud(t, [{ id: 'h1', url }, { id: 'h2' }]);
  const [h1, h2] = [cloud.agents.get('h1')!, cloud.agents.get('h2')!];
  const consumers = async () => {
    const connection = await amqplib.connect(SHARED_BROKER);
    try {
      return (await (await connection.createChannel()).checkQueue(`${cloud.prefix}.any`)).consumerCount;
    } finally {
      await connection.close();
    }
  };
  const client = cloud.client({ inactivityTimeoutMs: 60_000 });
  const direct = cloud.client({ inactivityTimeoutMs: 5_000 });
  const serves = async () => (await direct.request(makeRequest({ type: 'test.echo', target: 'h1', payload: { value: 'back' } })).catch(() => undefined))?.ok === true;
  const lines = (agent: typeof h1, id: string) => agent.output().split('\n').filter((line) => line.includes(id));
  const sent: ReturnType<typeof makeRequest>[] = [];
  let pushed: ReturnType<typeof makeRequest>[] = [];
  // The stall is tried again (at most three times) when none of the six is found in h1's socket: this
  // happened once in about thirty runs. Probably h1, woken, wrote before it read, met the reset of the
  // connection the broker had dropped, and lost what the socket held unread. The outcome for the callers
  // was right (h2 ran them, once); only this test's premise was missing.
  for (let attempt = 1; attempt <= 3 && pushed.length === 0; attempt++) {
    await until(async () => (await consumers()) === 2, 30_000);
    assert.equal(await consumers(), 2, 'both hosts take any-host requests');
    h1.child.kill('SIGSTOP');
    const requests = Array.from({ length: 6 }, (_, i) => makeRequest({ type: 'test.echo', payload: { value: `stall-${attempt}-${i}` } }));
    sent.push(...requests);
    const replies = await Promise.all(requests.map((request) => client.request(request)));
    // The broker pushed some into h1's socket; once it dropped h1 (no heartbeats) it gave them to h2.
    assert.deepEqual(
      replies.map((reply) => [reply.ok, reply.host]),
      requests.map(() => [true, 'h2']),
    );
    h1.child.kill('SIGCONT');
    // h1 reads what its socket held, finds that connection closed, and connects again: it then serves.
    await until(serves, 30_000);
    assert.ok(await serves(), 'h1 serves again');
    pushed = requests.filter((request) => lines(h1, request.id).length > 0);
  }
  assert.ok(pushed.length > 0, `in three stalls the broker pushed none of the six to h1 before it stalled:\n${h1.output()}`);
  for (const request of sent) assert.deepEqual(lines(h1, request.id).filter((line) => line.includes('"msg":"echo"')), [], `h1 ran ${request.id}`);
  for (const request of pushed) {
    assert.ok(lines(h2, request.id).some((line) => line.includes('"msg":"echo"')), `h2 ran ${request.id}`);
    assert.deepEqual(lines(h1, request.id).filter((line) => line.includes('"msg":"echo"')), [], `h1 ran ${request.id} too`);
    assert.ok(lines(h1, request.id).some((line) => line.includes('any-host request not run')), lines(h1, request.id).join('\n'));
  }
});

test('alarm — an any-host request whose "accepted" the broker does not confirm before its caller gives up is not run, and is dead-lettered', { timeout: 120_000 }, async (t) => {
  // From a review: in a broker resource alarm the confirm waited for would come only once the alarm cleared,
  // maybe hours later, and the request would then run for a caller long gone. A broker node of the test's own
  // (its memory alarm is set with rabbitmqctl), and a long downAfterMs, so that the agent does not reconnect
  // first on missing its own heartbeats (which ends the wait too, as a closed channel).
  const node = await startRabbitNode(t, { name: 'alarm' });
  const cloud = await startCloud(t, [{ id: 'h1' }], { url: node.url, downAfterMs: 30_000 });
  const h1 = cloud.agents.get('h1')!;
  const names = amqpNames(cloud.prefix);
  const client = cloud.client({ inactivityTimeoutMs: 3_000 }); // the request's broker TTL: 3 s
  h1.child.kill('SIGSTOP');
  const request = makeRequest({ type: 'test.echo', payload: { value: 'alarm' } });
  const outcome = client.request(request).then(
    () => 'answered',
    (error: CloudletError) => error.code,
  );
  const unacked = async () => (await node.ctl(['list_queues', 'name', 'messages_unacknowledged'])).split('\n').find((line) => line.startsWith(`${names.anyQueue}\t`));
  await until(async () => (await unacked())?.endsWith('\t1') === true, 15_000);
  assert.match((await unacked()) ?? '', /\t1$/, 'the broker pushed the request into the stopped h1');
  await node.ctl(['set_vm_memory_high_watermark', '0']); // the alarm: the broker stops reading publishers
  h1.child.kill('SIGCONT');
  assert.equal(await outcome, 'CLIENT_TIMEOUT');
  await until(() => h1.output().includes('any-host request not run: the broker had not confirmed'), 15_000);
  await node.ctl(['set_vm_memory_high_watermark', '0.4']);
  await until(async () => (await queueDepth(cloud.url, names.deadLetter)) === 1, 15_000);
  assert.equal(await queueDepth(cloud.url, names.deadLetter), 1, 'parked in the dead-letter queue, as an expired request is');
  const lines = h1.output().split('\n').filter((line) => line.includes(request.id));
  assert.ok(lines.some((line) => line.includes('any-host request not run: the broker had not confirmed')), lines.join('\n'));
  assert.deepEqual(lines.filter((line) => line.includes('"msg":"echo"')), [], 'h1 did not run it');
});

test('late — an any-host request that arrives after its deadline is answered DEADLINE_EXCEEDED, not parked unanswered', async (t) => {
  // Found rereading 2772afc: its wait for the confirm of "accepted" ended at the request's deadline, so a
  // request that arrived past it lost the race to a 0 ms timer and went to the dead-letter queue, its caller
  // told nothing. The wait now lasts the broker TTL, at least 2 s.
  const cloud = await startCloud(t, [{ id: 'h1' }]);
  const names = amqpNames(cloud.prefix);
  const connection = await amqplib.connect(cloud.url);
  t.after(() => connection.close().catch(() => undefined));
  const channel = await connection.createChannel();
  const replies: ReplyEnvelope[] = [];
  const queue = await replyQueue(channel, (reply) => replies.push(reply));
  const request = makeRequest({ type: 'test.echo', payload: { value: 'late' }, deadline: Date.now() - 1_000 });
  channel.sendToQueue(names.anyQueue, Buffer.from(JSON.stringify(request)), { messageId: request.id, replyTo: queue, type: request.type, expiration: '60000', contentType: 'application/json' });
  await until(() => replies.length > 0, 10_000);
  assert.deepEqual(replies.map((reply) => [reply.id, reply.error?.code]), [[request.id, 'DEADLINE_EXCEEDED']]);
  assert.equal(await queueDepth(cloud.url, names.deadLetter), 0);
});

test('alarm — hosts forget in a broker resource alarm gives up within its limits (BROKER_UNAVAILABLE), it does not hang', { timeout: 120_000 }, async (t) => {
  // A broker in a memory alarm stops reading every connection that publishes (the CLI's probe does): nothing
  // it asks afterwards is answered until the alarm clears, maybe hours later. Before, the channel for the
  // queue's delete was opened without a limit, and the command hung. A broker node of the test's own.
  const node = await startRabbitNode(t, { name: 'forget' });
  const prefix = `t-forget-${randomUUID().slice(0, 8)}`;
  const names = amqpNames(prefix);
  // The queue of a host that is gone: something to forget.
  const connection = await amqplib.connect(node.url);
  const channel = await connection.createChannel();
  await channel.assertQueue(names.hostQueue('ghost'));
  await connection.close();
  const dir = await tempDir(t);
  const config = await writeConfig(dir, 'client.yaml', `transport:\n  kind: amqp\n  url: "${node.url}"\n  prefix: ${prefix}\n`);
  await node.ctl(['set_vm_memory_high_watermark', '0']);
  t.after(() => node.ctl(['set_vm_memory_high_watermark', '0.4']).catch(() => undefined));
  const forgot = await runCli(['hosts', 'forget', 'ghost', '--config', config, '--json'], { timeoutMs: 60_000 });
  assert.equal(forgot.code, 4, forgot.stdout + forgot.stderr); // unreachable
  const error = (JSON.parse(forgot.stdout) as { error: { code: string; message: string } }).error;
  assert.equal(error.code, 'BROKER_UNAVAILABLE');
  assert.match(error.message, /within 10 s/);
});
