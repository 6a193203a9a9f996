/**
 * What a worker-thread round trip costs when the thread sleeps between messages, against messages that
 * reach it in bursts (docs/PERFORMANCE.md, F12 and F15). Not part of `npm run bench`: a probe of the
 * machine, run by hand:
 *
 *   node --import tsx bench/micro/thread-wakeups.ts
 *
 * Prints, per burst size, the CPU of the whole process (both threads) and the wall time per round trip.
 */
import { Worker } from 'node:worker_threads';

const worker = new Worker(
  `const { parentPort } = require('node:worker_threads'); parentPort.on('message', (m) => parentPort.postMessage(m.taskId));`,
  { eval: true },
);
let outstanding = 0;
let allBack: () => void = () => undefined;
worker.on('message', () => {
  if (--outstanding === 0) allBack();
});
// The shape of what tinypool posts for one cloudlet message.
const task = {
  task: { id: '0b5c9a57-5a2e-4f5a-9f1e-3c2b1a0d9e8f', type: 'test.echo', deadline: 1e15, payload: { value: 'x' }, acceptedAt: 1 },
  taskId: 1,
  filename: 'file:///worker.js',
  name: 'default',
};

async function measure(burst: number, total: number): Promise<{ cpuUs: number; wallUs: number }> {
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  for (let round = 0; round < total / burst; round++) {
    // A turn of the event loop between bursts: the thread has answered and gone back to sleep.
    await new Promise((resolve) => setImmediate(resolve));
    const done = new Promise<void>((resolve) => (allBack = resolve));
    outstanding = burst;
    for (let i = 0; i < burst; i++) worker.postMessage({ ...task, taskId: i });
    await done;
  }
  const cpu = process.cpuUsage(cpuBefore);
  return { cpuUs: (cpu.user + cpu.system) / total, wallUs: ((performance.now() - started) * 1000) / total };
}

for (const burst of [1, 2, 4, 8, 16]) {
  await measure(burst, 4_000); // warm-up
  const { cpuUs, wallUs } = await measure(burst, 32_000);
  console.log(`burst ${String(burst).padStart(2)}: ${cpuUs.toFixed(1)} µs CPU and ${wallUs.toFixed(1)} µs wall per round trip`);
}
await worker.terminate();
