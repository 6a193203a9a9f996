/**
 * BrokerConnection.restart against a real broker: the connection is dropped and set up again, and restarts
 * in a row pause longer each time (amqplib's recovery starts its own backoff afresh after every connect, so
 * a cause that comes back right after setup would otherwise reconnect ten times a second).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import process from 'node:process';
import test from 'node:test';
import { createLogger, memoryDestination } from '../../core/logger.ts';
import { BrokerConnection } from '../../core/transports/amqp/connection.ts';
import { SHARED_BROKER } from '../support/cloud.ts';
import { until } from '../helpers.ts';

test('amqp — restart() sets the connection up again, pausing 100, 200, 400, … ms (up to the reconnect cap) for restarts in a row', { timeout: 60_000 }, async (t) => {
  const memory = memoryDestination();
  let setups = 0;
  const connection = new BrokerConnection({
    url: SHARED_BROKER,
    log: createLogger({ level: 'warn', format: 'json', destination: memory.stream }),
    maxReconnectDelayMs: 500,
    setup: async (model) => {
      setups++;
      await model.createChannel();
    },
  });
  t.after(() => connection.close());
  await connection.open();
  assert.equal(setups, 1);
  for (let i = 0; i < 4; i++) {
    const up = once(connection, 'up');
    connection.restart(`test restart ${i + 1}`);
    connection.restart('a second call for the same connection does nothing');
    await up;
  }
  assert.equal(setups, 5, 'each restart ran setup again');
  assert.equal(connection.isUp, true);
  const pauses = memory
    .lines()
    .map((line) => line as { reason?: string; pauseMs?: number })
    .filter((line) => line.reason?.startsWith('test restart'))
    .map((line) => line.pauseMs);
  assert.deepEqual(pauses, [100, 200, 400, 500], 'doubling, capped at maxReconnectDelayMs');
});

test('amqp — close() while open() is still connecting leaves no connection behind', { timeout: 60_000 }, async (t) => {
  const sockets = () => process.getActiveResourcesInfo().filter((kind) => kind === 'TCPSocketWrap').length;
  const before = sockets();
  const connection = new BrokerConnection({
    url: SHARED_BROKER,
    log: createLogger({ level: 'fatal', format: 'json', destination: memoryDestination().stream }),
    setup: async (model) => void (await model.createChannel()),
  });
  t.after(() => connection.close());
  const opening = connection.open().then(
    () => 'opened',
    (error: { code?: string }) => error.code,
  );
  await connection.close(); // before the broker has answered
  // Before: open() went on to finish, and the connection it made stayed up with nobody to close it (a
  // client closed right after starting a call kept its process alive).
  assert.equal(await opening, 'BROKER_UNAVAILABLE');
  await until(() => sockets() === before, 10_000);
  assert.equal(sockets(), before, 'a socket to the broker is still open');
  assert.equal(connection.isUp, false);
});

test('amqp — close() ends every wait for the connection at once, with BROKER_UNAVAILABLE; a wait after close() fails at once', { timeout: 30_000 }, async (t) => {
  let setups = 0;
  const connection = new BrokerConnection({
    url: SHARED_BROKER,
    log: createLogger({ level: 'fatal', format: 'json', destination: memoryDestination().stream }),
    maxReconnectDelayMs: 200,
    setup: async (model) => {
      // Up once; after the restart below every reconnect fails, so the connection stays down.
      if (++setups > 1) throw new Error('the test keeps this connection down');
      await model.createChannel();
    },
  });
  t.after(() => connection.close());
  await connection.open();
  // While up: a wait for the next connection (the agent's, after the broker closed its channel).
  const nextConnection = settled(connection.waitUntilUp(Date.now() + 60_000, { next: true }));
  const down = once(connection, 'down');
  connection.restart('test: drop the connection');
  await down;
  const reconnect = settled(connection.waitUntilUp(Date.now() + 60_000));
  await until(() => setups >= 2, 10_000); // recovery tries again, and fails
  assert.equal(nextConnection.outcome, undefined, 'still waiting (else this test proves nothing)');
  assert.equal(reconnect.outcome, undefined, 'still waiting (else this test proves nothing)');
  await connection.close();
  // Before: both waited out their 60 s deadline, and their timers kept the process alive that long.
  await until(() => nextConnection.outcome !== undefined && reconnect.outcome !== undefined, 5_000);
  assert.equal(nextConnection.outcome, 'BROKER_UNAVAILABLE');
  assert.equal(reconnect.outcome, 'BROKER_UNAVAILABLE');
  assert.match(reconnect.message ?? '', /was closed/);
  const afterClose = settled(connection.waitUntilUp(Date.now() + 60_000));
  await until(() => afterClose.outcome !== undefined, 5_000);
  assert.equal(afterClose.outcome, 'BROKER_UNAVAILABLE');
});

/** Follows a promise: `outcome` is 'resolved' or the error's code once it settles. */
function settled(promise: Promise<unknown>): { outcome?: string; message?: string } {
  const state: { outcome?: string; message?: string } = {};
  promise.then(
    () => (state.outcome = 'resolved'),
    (error: { code?: string; message?: string }) => {
      state.outcome = error.code ?? 'error';
      state.message = error.message;
    },
  );
  return state;
}
