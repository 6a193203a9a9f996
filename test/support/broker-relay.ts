/**
 * Lets agents inside a throw-away network namespace reach the RabbitMQ on the host's loopback without any
 * network device: a relay inside the namespace listens on its own 127.0.0.1:5672 and forwards each
 * connection through a unix socket (a file, visible on both sides) to a relay outside, which connects to
 * the host's broker. All traffic stays on loopback addresses and files the test created.
 */
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { Netns } from './netns.ts';

const INNER_RELAY = `
const net = require('node:net');
const [socketPath, port] = process.argv.slice(1);
net.createServer((client) => {
  const upstream = net.createConnection(socketPath);
  client.pipe(upstream).pipe(client);
  const end = () => { client.destroy(); upstream.destroy(); };
  client.on('error', end); upstream.on('error', end); client.on('close', end); upstream.on('close', end);
}).listen(Number(port), '127.0.0.1', () => console.log('relay ready'));
`;

export async function relayBrokerIntoNetns(t: TestContext, ns: Netns, brokerPort = 5672): Promise<{ url: string }> {
  const socketPath = join(ns.dir, 'broker-relay.sock');
  const sockets = new Set<Socket>();
  const outer = createServer((inner) => {
    const broker = createConnection(brokerPort, '127.0.0.1');
    sockets.add(inner).add(broker);
    inner.pipe(broker).pipe(inner);
    const end = () => {
      inner.destroy();
      broker.destroy();
    };
    inner.on('error', end);
    broker.on('error', end);
    inner.on('close', end);
    broker.on('close', end);
  });
  await new Promise<void>((resolve) => outer.listen(socketPath, resolve));
  t.after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => outer.close(resolve));
  });
  const relay = ns.spawn([process.execPath, '-e', INNER_RELAY, socketPath, String(brokerPort)]);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the broker relay inside the namespace did not start')), 10_000);
    relay.child.stdout?.on('data', (chunk) => {
      if (String(chunk).includes('relay ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { url: `amqp://guest:guest@127.0.0.1:${brokerPort}` };
}
