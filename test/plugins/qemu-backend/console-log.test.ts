/** get-console-log's tail read, against a serial.log that shrank after its size was taken. */
import assert from 'node:assert/strict';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { readTail } from '../../../plugins/qemu-backend/handlers/get-console-log.ts';
import { tempDir } from '../../helpers.ts';

test('console log — a log emptied between its size and its read gives what was read, never zeros', async (t) => {
  // A start or restart of the VM empties serial.log, and get-console-log is not serialised with them. A
  // review saw 182 of 3,000 replies carry 65,536 NUL characters: the buffer was sent whole.
  const file = join(await tempDir(t), 'serial.log');
  await writeFile(file, 'booted\n');
  const handle = await open(file, 'r');
  t.after(() => handle.close());
  const tail = await readTail(handle, 100_000, 65_536); // the size taken before the log was emptied
  assert.equal(new TextDecoder().decode(tail), '');
  assert.deepEqual(new TextDecoder().decode(await readTail(handle, 7, 65_536)), 'booted\n');
  assert.deepEqual(new TextDecoder().decode(await readTail(handle, 7, 3)), 'ed\n');
});
