/** The metrics plugin's HTTP endpoint against clients that misbehave: slow headers, too many connections. */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import test from 'node:test';
import { Registry } from 'prom-client';
import type { AgentView } from '../../../core/plugin-api.ts';
import { metricsOptionsSchema } from '../../../plugins/metrics/options.ts';
import { MAX_CONNECTIONS, startEndpoint, stopEndpoint } from '../../../plugins/metrics/server.ts';

async function endpoint(t: test.TestContext) {
  const agent = { state: () => 'running', transportUp: () => true, inFlight: () => 0 } as unknown as AgentView;
  const { server, address } = await startEndpoint({
    host: '127.0.0.1',
    port: 0,
    metricsPath: '/metrics',
    healthPath: '/healthz',
    registry: new Registry(),
    agent,
    hostId: 'h1',
    transportKind: 'local',
    onError: () => undefined,
  });
  t.after(() => stopEndpoint(server));
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

const open = (port: number) =>
  new Promise<Socket>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => resolve(socket));
    socket.once('error', reject);
  });
const closed = (socket: Socket) => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve())));

test('metrics endpoint — a client that sends its headers a line a second is cut off after the 5 s header timeout, not 30 s', { timeout: 30_000 }, async (t) => {
  const port = await endpoint(t);
  const slow = await open(port);
  slow.on('error', () => undefined);
  t.after(() => slow.destroy());
  slow.write('GET /metrics HTTP/1.1\r\nHost: x\r\n');
  const dribble = setInterval(() => slow.writable && slow.write(`X-Slow-${Date.now()}: 1\r\n`), 1_000);
  t.after(() => clearInterval(dribble));
  const started = performance.now();
  await closed(slow);
  // Node checks the timeout once a second now (every 30 s by default, which held the connection ~31 s).
  assert.ok(performance.now() - started < 10_000, `held for ${(performance.now() - started).toFixed(0)} ms`);
});

test('metrics endpoint — past its connection limit new connections are closed at once, and it still answers', { timeout: 30_000 }, async (t) => {
  const port = await endpoint(t);
  const sockets: Socket[] = [];
  t.after(() => sockets.forEach((socket) => socket.destroy()));
  for (let i = 0; i < MAX_CONNECTIONS + 10; i++) {
    const socket = await open(port);
    socket.on('error', () => undefined);
    sockets.push(socket);
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
  const dropped = sockets.filter((socket) => socket.destroyed || socket.readableEnded).length;
  assert.ok(dropped >= 10, `${dropped} of ${sockets.length} idle connections were closed`);
  sockets.forEach((socket) => socket.destroy());
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
});

test('metrics options — listen takes an IP address or a host name with a port; shorthands that mean "every interface" are refused', () => {
  // Before, "0:19477" passed and listened on 0.0.0.0 (every interface), and "[1.2.3.4]:1", "[:::]:1",
  // "999.1.1.1:1" and "-:1" passed config check and failed at start.
  for (const listen of ['0:19477', '999.1.1.1:19477', '127.1:19477', '-:19477', '[1.2.3.4]:19477', '[:::]:19477', 'host_name:1', 'a..b:1']) {
    const parsed = metricsOptionsSchema.safeParse({ listen });
    assert.equal(parsed.success, false, listen);
  }
  for (const listen of ['127.0.0.1:9477', '[::1]:9477', 'localhost:9477', 'metrics.example:0', '0.0.0.0:9477', '[::]:9477']) {
    assert.equal(metricsOptionsSchema.safeParse({ listen }).success, true, listen);
  }
});

test('metrics endpoint — an absolute-form request path is served; a refused method is told what is allowed', async (t) => {
  const port = await endpoint(t);
  const ask = (request: string) =>
    new Promise<string>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.end(request));
      let text = '';
      socket.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => resolve(text)).on('error', reject);
    });
  assert.match(await ask('GET http://h1/healthz HTTP/1.1\r\nHost: h1\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
  const refused = await ask('DELETE /metrics HTTP/1.1\r\nHost: h1\r\nConnection: close\r\n\r\n');
  assert.match(refused, /^HTTP\/1\.1 405 /);
  assert.match(refused, /DELETE is not served here: GET or HEAD \/metrics or \/healthz/);
});
