/**
 * QmpClient against stand-in monitors that misbehave (the real QEMU monitor is in test/e2e/qemu-backend.test.ts).
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { QmpClient } from '../../../plugins/qemu-backend/qmp.ts';
import { tempDir } from '../../helpers.ts';
import { QMP_GREETING, standInSocket } from '../../support/stand-in-socket.ts';

test('qmp — a monitor that greets and then never negotiates: connect fails at its timeout and lets go of the socket', { timeout: 10_000 }, async (t) => {
  // QEMU serves one QMP client at a time: a connection left open after a failed connect would hold the
  // monitor until the agent exits (stop-vm would fall through to SIGKILL, get-vm lose qmpStatus).
  const path = `${await tempDir(t, 'cloudlet-qmp-')}/qmp.sock`;
  const { clientGone } = await standInSocket(t, path, (socket) => {
    socket.resume();
    socket.write(QMP_GREETING);
  });
  await assert.rejects(QmpClient.connect(path, 200), /qmp_capabilities" got no answer within 200 ms/);
  await clientGone;
});

test('qmp — a monitor that never greets: connect fails at its timeout and lets go of the socket', { timeout: 10_000 }, async (t) => {
  const path = `${await tempDir(t, 'cloudlet-qmp-')}/qmp.sock`;
  const { clientGone } = await standInSocket(t, path);
  await assert.rejects(QmpClient.connect(path, 200), /no QMP greeting/);
  await clientGone;
});

test('qmp — lines that are JSON but not objects, and an error that is not one, are no crash', { timeout: 10_000 }, async (t) => {
  // Before, `'QMP' in null` threw inside the socket's data listener: uncaught, it ended the worker (get-vm,
  // stop-vm and delete-vm answered WORKER_CRASHED), and in the agent's start-up reconcile the agent itself.
  const path = `${await tempDir(t, 'cloudlet-qmp-')}/qmp.sock`;
  await standInSocket(t, path, (socket) => {
    socket.setEncoding('utf8');
    socket.write(`null\n42\n"text"\n[1]\n${QMP_GREETING}`);
    socket.on('data', (data: string) => {
      for (const line of data.split('\n').filter(Boolean)) {
        const { id, execute } = JSON.parse(line) as { id: string; execute: string };
        socket.write(`null\n${JSON.stringify(execute === 'qmp_capabilities' ? { return: {}, id } : { error: null, id })}\n`);
      }
    });
  });
  const qmp = await QmpClient.connect(path, 2_000);
  t.after(() => qmp.close());
  await assert.rejects(qmp.execute('query-status', undefined, 2_000), (error: { code: string; message: string }) => {
    assert.equal(error.code, 'QMP_FAILED');
    assert.match(error.message, /^QMP error: unknown$/);
    return true;
  });
});

test('qmp — a monitor that closes before it greets fails connect at once, saying so', { timeout: 60_000 }, async (t) => {
  // Before, connect waited out its whole timeout (5 s for every stop or get-vm of a QEMU that is exiting),
  // then said "no QMP greeting".
  const path = `${await tempDir(t, 'cloudlet-qmp-')}/qmp.sock`;
  await standInSocket(t, path, (socket) => socket.end());
  // A minute's timeout: failing well before it can only be the close (a did-not-wait bound, not a timing target).
  const started = Date.now();
  await assert.rejects(QmpClient.connect(path, 60_000), /the QMP connection closed before QEMU greeted/);
  assert.ok(Date.now() - started < 30_000, `took ${Date.now() - started} ms`);
});

test('qmp — a line longer than 1 MiB ends the connection with QMP_FAILED, not a growing buffer', { timeout: 10_000 }, async (t) => {
  const path = `${await tempDir(t, 'cloudlet-qmp-')}/qmp.sock`;
  const { clientGone } = await standInSocket(t, path, (socket) => {
    socket.on('error', () => undefined); // the client cuts it off mid-write
    socket.resume();
    socket.write(QMP_GREETING);
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 40; i++) socket.write(chunk);
  });
  await assert.rejects(QmpClient.connect(path, 5_000), /the monitor sent a line longer than 1048576 bytes/);
  await clientGone;
});
