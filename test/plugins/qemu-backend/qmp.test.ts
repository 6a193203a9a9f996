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
