/**
 * BindingKeeper with a fake channel: what it binds again, and what it must not (a forgotten queue, an old
 * channel's bindings). The broker side — bindings deleted under running agents and clients — is tested
 * against RabbitMQ in test/e2e/amqp-faults.test.ts.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import type { Channel } from 'amqplib';
import { amqpTransportSchema } from '../../core/config/schema.ts';
import { BindingKeeper } from '../../core/transports/amqp/bindings.ts';
import { until } from '../helpers.ts';

/** Records every bindQueue call; once `closed`, refuses each (as amqplib does). */
function fakeChannel() {
  const calls: string[] = [];
  const channel = {
    closed: false,
    calls,
    bindQueue(queue: string, exchange: string, key: string) {
      calls.push(`${queue}>${exchange}:${key}`);
      return channel.closed ? Promise.reject(new Error('Channel closed')) : Promise.resolve({});
    },
  };
  return channel;
}

const asChannel = (fake: ReturnType<typeof fakeChannel>) => fake as unknown as Channel;

test('bindingRefreshMs — 30 s unless configured', () => {
  assert.equal(amqpTransportSchema.parse({ kind: 'amqp', url: 'amqp://broker' }).bindingRefreshMs, 30_000);
  assert.equal(amqpTransportSchema.parse({ kind: 'amqp', url: 'amqp://broker', bindingRefreshMs: 750 }).bindingRefreshMs, 750);
});

test('BindingKeeper — each interval is jittered (±20%), so hosts that reconnected together spread out', async (t) => {
  // A random draw near 1 stretches every interval of 50 ms to ~60 ms (timers fire late, never early).
  const keeper = new BindingKeeper(50, () => 0.99);
  t.after(() => keeper.close());
  const channel = fakeChannel();
  await keeper.bind(asChannel(channel), 'q1', 'x.direct', 'h1');
  const at: number[] = [];
  const bindQueue = channel.bindQueue;
  channel.bindQueue = (...args) => {
    at.push(performance.now());
    return bindQueue(...args);
  };
  await until(() => at.length >= 6, 5_000);
  const gaps = at.slice(1).map((time, i) => time - (at[i] as number));
  const mean = gaps.reduce((sum, gap) => sum + gap, 0) / gaps.length;
  assert.ok(mean >= 57, `intervals not stretched by the draw (50 ms unjittered): ${JSON.stringify(gaps)}`);
});

test('BindingKeeper — binds at once, then again every interval, each binding it was given', async (t) => {
  const keeper = new BindingKeeper(20);
  t.after(() => keeper.close());
  const channel = fakeChannel();
  await keeper.bind(asChannel(channel), 'q1', 'x.direct', 'h1');
  keeper.keep(asChannel(channel), 'dead', 'dead', '');
  assert.deepEqual(channel.calls, ['q1>x.direct:h1'], 'bind() binds; keep() records a binding already made');
  await until(() => channel.calls.length >= 5, 10_000);
  assert.ok(channel.calls.includes('dead>dead:'), 'the kept binding is made again too');
  assert.ok(channel.calls.filter((c) => c === 'q1>x.direct:h1').length >= 2);
});

test('BindingKeeper — a forgotten queue is not bound again (it may be deleted: that would close the channel)', async (t) => {
  const keeper = new BindingKeeper(20);
  t.after(() => keeper.close());
  const channel = fakeChannel();
  await keeper.bind(asChannel(channel), 'broadcast.h1', 'x.broadcast', '');
  await keeper.bind(asChannel(channel), 'presence', 'x.presence', '');
  keeper.forget('broadcast.h1');
  channel.calls.length = 0;
  await until(() => channel.calls.length >= 3, 10_000);
  assert.deepEqual(new Set(channel.calls), new Set(['presence>x.presence:']));
});

test('BindingKeeper — a new channel (a reconnect) starts a new list; the old channel is left alone', async (t) => {
  const keeper = new BindingKeeper(20);
  t.after(() => keeper.close());
  const old = fakeChannel();
  await keeper.bind(asChannel(old), 'presence-1', 'x.presence', '');
  old.closed = true; // refusals from a closed channel are swallowed, not thrown at the timer
  const current = fakeChannel();
  await keeper.bind(asChannel(current), 'presence-2', 'x.presence', '');
  current.calls.length = 0;
  await until(() => current.calls.length >= 3, 10_000);
  assert.deepEqual(new Set(current.calls), new Set(['presence-2>x.presence:']));
  assert.deepEqual(old.calls, ['presence-1>x.presence:'], 'nothing more on the old channel');
});

test('BindingKeeper — after close() nothing is bound again', async () => {
  const keeper = new BindingKeeper(20);
  const channel = fakeChannel();
  await keeper.bind(asChannel(channel), 'q1', 'x.direct', 'h1');
  keeper.close();
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(channel.calls, ['q1>x.direct:h1']);
});
