/**
 * Loaded with `--import` into the process under study by bench/micro/agent-stages.ts (and, through the
 * pools' inherited Node options, into every handler thread of an agent). It changes no behaviour: it
 * notes the time of four points on a request's way through the process, from outside the product's code:
 *
 *   A  amqplib hands a delivery to its consumer (the request's frames are parsed)
 *   C  tinypool.run is called (the dispatcher hands the message to its pool)
 *   W  the handler thread takes the task, and hands its result back (both seen from that thread)
 *   D  tinypool.run's promise settles on the main thread
 *   G  the next socket write after D (the reply's frames leave the process)
 *
 * Meant for one request at a time (c=1): a delivery that arrives before the previous one was written is not
 * recorded. SIGUSR1 clears the records; SIGUSR2 writes them as JSON to CLOUDLET_PROBE_STAGES_OUT.
 * `process.on` for those signals replaces their default action (ending the process) in the process studied.
 */
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import process from 'node:process';
import { isMainThread, MessagePort } from 'node:worker_threads';

const now = () => performance.timeOrigin + performance.now();

if (isMainThread) {
  const require = createRequire(import.meta.url);
  /** Only deliveries of this message type start a record (empty: every delivery). */
  const onlyType = process.env.CLOUDLET_PROBE_TYPE ?? '';
  const records = [];
  let current;

  // amqplib's package exports hide lib/; the file path is the same module amqplib itself loaded.
  const { BaseChannel } = require(require.resolve('amqplib').replace(/channel_api\.js$/, 'lib/channel.js'));
  const dispatchMessage = BaseChannel.prototype.dispatchMessage;
  BaseChannel.prototype.dispatchMessage = function (fields, message) {
    if (message && (onlyType === '' || message.properties?.type === onlyType)) current = current ? undefined : { A: now() };
    return dispatchMessage.call(this, fields, message);
  };

  try {
    const { Tinypool } = await import('tinypool');
    const run = Tinypool.prototype.run;
    Tinypool.prototype.run = function (task, options) {
      const record = current;
      if (record) record.C = now();
      return run.call(this, task, options).then((result) => {
        if (record && result && typeof result === 'object') {
          record.W = result.__probeWorker;
          delete result.__probeWorker;
          record.D = now();
        }
        return result;
      });
    };
  } catch {
    // a process without tinypool (the raw echo servers): A → G only
  }

  const noteWrite = () => {
    if (!current || (current.C !== undefined && current.D === undefined)) return;
    current.G = now();
    records.push(current);
    current = undefined;
  };
  for (const method of ['_write', '_writev']) {
    const original = net.Socket.prototype[method];
    net.Socket.prototype[method] = function (...args) {
      noteWrite();
      return original.apply(this, args);
    };
  }

  process.on('SIGUSR1', () => {
    records.length = 0;
    current = undefined;
  });
  process.on('SIGUSR2', () => {
    const out = process.env.CLOUDLET_PROBE_STAGES_OUT;
    if (out) writeFileSync(out, JSON.stringify(records));
  });
} else {
  // A handler thread: when tinypool's port delivers a task, and when the result goes back on that port.
  const started = new Map();
  const on = MessagePort.prototype.on;
  MessagePort.prototype.on = function (event, listener) {
    if (event !== 'message') return on.call(this, event, listener);
    return on.call(this, event, (message, ...rest) => {
      if (message && typeof message === 'object' && 'taskId' in message) started.set(message.taskId, now());
      return listener(message, ...rest);
    });
  };
  const postMessage = MessagePort.prototype.postMessage;
  MessagePort.prototype.postMessage = function (message, ...rest) {
    if (message && typeof message === 'object' && 'taskId' in message && message.result && typeof message.result === 'object') {
      message.result.__probeWorker = [started.get(message.taskId), now()];
      started.delete(message.taskId);
    }
    return postMessage.call(this, message, ...rest);
  };
}
