/** list-images through a real agent, with a stand-in qemu-img that records how many of it run at once. */
import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import { makeRequest } from '../../../core/envelope.ts';
import { startAgent, tempDir } from '../../helpers.ts';

test('list-images — asks qemu-img about at most 4 images at a time, and lists every one', { timeout: 60_000 }, async (t) => {
  // Before, it started one qemu-img per image at once: a folder of 100 images meant 100 processes.
  const dir = await tempDir(t, 'cloudlet-list-images-');
  const images = join(dir, 'images');
  await mkdir(images);
  for (let i = 0; i < 12; i++) await writeFile(join(images, `base${i}.qcow2`), 'stand-in');
  const log = join(dir, 'qemu-img.log');
  const qemuImg = join(dir, 'qemu-img');
  // `qemu-img info --output=json --backing-chain -- PATH`: logs its start and end, answers "a qcow2".
  await writeFile(
    qemuImg,
    `#!/bin/sh\nfor last; do :; done\necho start >> ${log}\nsleep 0.3\necho end >> ${log}\nprintf '[{"filename": "%s", "format": "qcow2"}]' "$last"\n`,
  );
  await chmod(qemuImg, 0o755);
  const { client } = await startAgent(t, { plugins: [{ use: 'qemu-backend', options: { imagesDir: images, stateDir: join(dir, 'state'), qemuImgBinary: qemuImg } }] });
  const reply = await client.request(makeRequest({ type: 'list-images', payload: {}, deadline: Date.now() + 30_000 }));
  assert.ok(reply.ok, JSON.stringify(reply.error));
  assert.equal((reply.result as { images: unknown[] }).images.length, 12);
  let running = 0;
  let most = 0;
  for (const line of (await readFile(log, 'utf8')).trim().split('\n')) {
    running += line === 'start' ? 1 : -1;
    most = Math.max(most, running);
  }
  assert.ok(most <= 4, `${most} qemu-img ran at once`);
  assert.ok(most >= 2, `${most}: the images are still asked about in parallel`);
});
