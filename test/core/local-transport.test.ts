/**
 * The local transport's edges: a peer that does not read, a peer that half-closes, what may sit at the
 * socket path, the shared-temp fallback folder, an agent that stops answering, and answers a client cannot
 * match by id. Agents run in this process on sockets in temp folders.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, chown, mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import process from 'node:process';
import test, { type TestContext } from 'node:test';
import { Agent } from '../../core/agent.ts';
import { loadHostConfig } from '../../core/config/host-config.ts';
import { rawConfigFrom } from '../../core/config/load.ts';
import { makeEvent, makeRequest, type ReplyEnvelope } from '../../core/envelope.ts';
import { createLogger, memoryDestination } from '../../core/logger.ts';
import { FrameReader, salvageIds } from '../../core/transports/ndjson.ts';
import { LocalAgentTransport, LocalClientTransport } from '../../core/transports/local.ts';
import { lockSocketPath, onHeldLock, socketLockName } from '../../core/transports/socket-path.ts';
import { LockWaitCalledOff, looksLikeAgent } from '../../core/abstract-lock.ts';
import { startAgent, tempDir, testkitPath, until } from '../helpers.ts';

const withTestkit = { plugins: [{ use: testkitPath, options: {} }] };
const line = (type: string, payload: unknown, id?: string) => `${JSON.stringify(makeRequest({ type, payload, ...(id ? { id } : {}) }))}\n`;

/** Collects the lines a raw socket receives (once it reads). */
function linesOf(socket: Socket): string[] {
  const lines: string[] = [];
  let buffer = '';
  socket.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('utf8');
    let newline: number;
    while ((newline = buffer.indexOf('\n')) !== -1) {
      lines.push(buffer.slice(0, newline));
      buffer = buffer.slice(newline + 1);
    }
  });
  return lines;
}

async function connected(path: string): Promise<Socket> {
  const socket = createConnection(path);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

test('local — a peer that stops reading is read no further until it catches up, and loses no reply', { timeout: 120_000 }, async (t) => {
  // Before, every request was read and answered into the socket's buffer: a client that never reads grew
  // the agent's memory without bound (hundreds of MB in the review's run).
  let handled = 0;
  // A queue long enough that no request is refused BUSY: tiny refusals would fill the kernel's buffers by
  // the hundred and blur what is measured.
  const { socketPath } = await startAgent(t, { ...withTestkit, pools: { 'test.blob': { maxQueue: 2_000 } } }, { observer: () => handled++ });
  const socket = await connected(socketPath);
  t.after(() => socket.destroy());
  socket.pause(); // reads nothing: replies pile up in the agent
  // Requests enough for several socket reads (~170 kB), replies of 100 MB in all.
  const requests = 2_000;
  for (let i = 0; i < requests; i++) socket.write(line('test.blob', { bytes: 50_000 }, `blob-${i}`));
  // Wait until the agent stops taking requests (no change for a second).
  let seen = -1;
  await until(async () => {
    if (handled === seen && handled > 0) return true;
    seen = handled;
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    return false;
  }, 60_000);
  // The agent stops at 256 unfinished requests or 8 MiB of unread replies, whichever comes first; replies
  // the kernel's socket buffers took count as read (261 in all, measured). Before the fix all 2,000 were
  // taken and their 100 MB of replies sat in the agent's memory; with reading paused only between socket
  // reads (the first version of the fix), ~1,000.
  t.diagnostic(`${handled} of ${requests} requests taken while the peer read nothing`);
  assert.ok(handled < 600, `${handled} of ${requests} requests were taken while the peer read nothing`);
  const lines = linesOf(socket);
  socket.resume();
  await until(() => lines.length === requests, 60_000);
  const replies = lines.map((l) => JSON.parse(l) as ReplyEnvelope);
  assert.deepEqual(new Set(replies.map((r) => r.id)).size, requests);
  assert.deepEqual([...new Set(replies.map((r) => (r.ok ? 'ok' : r.error?.code)))], ['ok']);
});

test('local — a subscriber is not cut off because replies wait on its connection; only unread events count', { timeout: 60_000 }, async (t) => {
  // Before, an event published while more than 8 MiB of replies waited on a subscribed connection destroyed
  // it, and every request on it failed with CONNECTION_LOST.
  let handled = 0;
  const { socketPath, agent } = await startAgent(t, withTestkit, { observer: () => handled++ });
  const socket = await connected(socketPath);
  t.after(() => socket.destroy());
  socket.pause();
  socket.write(`${JSON.stringify({ v: 1, kind: 'subscribe' })}\n`);
  const requests = 12;
  for (let i = 0; i < requests; i++) socket.write(line('test.blob', { bytes: 900_000 }, `big-${i}`));
  await until(() => handled === requests, 30_000); // ~11 MB of replies wait unread in the agent
  await agent.transport.publishEvent(makeEvent('test.mid-burst', 'test-host', {}));
  const lines = linesOf(socket);
  socket.resume();
  await until(() => lines.length === requests + 1 || socket.destroyed, 30_000);
  const kinds = lines.map((l) => (JSON.parse(l) as { kind: string; ok?: boolean }).kind);
  assert.equal(socket.destroyed, false, 'the connection was cut off');
  assert.deepEqual([kinds.filter((k) => k === 'reply').length, kinds.filter((k) => k === 'event').length], [requests, 1]);
});

test('local — FrameReader.pause stops at the frame it is on, not at the end of the chunk; end waits for resume', () => {
  const frames: string[] = [];
  const reader: FrameReader = new FrameReader(1_000, {
    onFrame: (frame) => {
      frames.push(frame.toString('utf8'));
      if (frames.length === 2) reader.pause();
    },
    onOversize: () => undefined,
  });
  reader.push(Buffer.from('a\nb\nc\nd'));
  reader.push(Buffer.from('\ne\nf'));
  reader.end(); // "f" has no newline: it is a frame once the reader resumes
  assert.deepEqual(frames, ['a', 'b']);
  reader.resume();
  assert.deepEqual(frames, ['a', 'b', 'c', 'd', 'e', 'f']);

  // Paused and resumed from inside a frame handler (a reply written at once frees a slot): nothing is lost or
  // handed out twice or out of order.
  const again: string[] = [];
  const reentrant: FrameReader = new FrameReader(1_000, {
    onFrame: (frame) => {
      again.push(frame.toString('utf8'));
      if (again.length === 1) {
        reentrant.pause();
        reentrant.push(Buffer.from('ccc\nd\n'));
        reentrant.resume();
      }
    },
    onOversize: () => undefined,
  });
  reentrant.push(Buffer.from('a\nb\n'));
  assert.deepEqual(again, ['a', 'b', 'ccc', 'd']);
});

test('local — a client closes at once after cancelling a request the agent still runs', { timeout: 30_000 }, async (t) => {
  // With half-open connections the agent keeps its side open while the request runs; the client has nothing
  // left to wait for and must not sit out its 1 s grace (every cancelled CLI call would pay it).
  // A grace longer than the test may take, and a request that outlives it: only closing once nothing is due
  // can end the close in time. (The agent's own shutdown cancels the sleep when the test ends.)
  const { socketPath } = await startAgent(t, { ...withTestkit, shutdown: { graceMs: 100 } });
  const client = new LocalClientTransport({ socketPath, closeGraceMs: 600_000 });
  const cancel = new AbortController();
  const running = client.request(makeRequest({ type: 'test.sleep', payload: { ms: 60_000 } }), { signal: cancel.signal });
  await new Promise((resolve) => setTimeout(resolve, 100));
  cancel.abort();
  await assert.rejects(running, { code: 'CANCELLED' });
  await client.close();
});

test('local — a subscribed client closing with a reply still due closes once it arrives, not after the grace', { timeout: 30_000 }, async (t) => {
  // The agent never ends a subscriber's connection: the client must end it once its last answer is in.
  // A grace longer than the test may take: only ending on the last answer can end the close in time.
  const { socketPath } = await startAgent(t, withTestkit);
  const client = new LocalClientTransport({ socketPath, closeGraceMs: 600_000 });
  await client.subscribe(() => undefined);
  const reply = client.request(makeRequest({ type: 'test.sleep', payload: { ms: 300 } }));
  await new Promise((resolve) => setTimeout(resolve, 50));
  await client.close();
  assert.equal((await reply).ok, true, 'the reply due still arrived');
});

test('local — a client that half-closes after its request still gets the reply (socat, nc -U)', async (t) => {
  const { socketPath } = await startAgent(t);
  const socket = await connected(socketPath);
  t.after(() => socket.destroy());
  const lines = linesOf(socket);
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.end(line('host-info', {}, 'half-open'));
  await closed; // the agent ends its side once the reply is written
  assert.equal(lines.length, 1);
  const reply = JSON.parse(lines[0] as string) as ReplyEnvelope;
  assert.deepEqual([reply.id, reply.ok], ['half-open', true]);
});

test('local — a last request without its newline, before the client half-closes, is answered too', async (t) => {
  const { socketPath } = await startAgent(t);
  const socket = await connected(socketPath);
  t.after(() => socket.destroy());
  const lines = linesOf(socket);
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.end(line('host-info', {}, 'no-newline').trimEnd());
  await closed;
  assert.deepEqual(lines.map((l) => (JSON.parse(l) as ReplyEnvelope).id), ['no-newline']);
});

async function agentOn(t: TestContext, socketPath: string): Promise<Agent> {
  const config = await loadHostConfig(rawConfigFrom({ host: { id: 'h1' }, transport: { kind: 'local', socket: socketPath } }, join(await tempDir(t), 'cloudlet.yaml')));
  const agent = new Agent(config, { logger: createLogger({ level: 'fatal', format: 'json', destination: memoryDestination().stream }) });
  t.after(() => agent.stop('test finished'));
  return agent;
}

test('local — at the socket path: a file that is not a socket is never removed; a live listener is not taken; a stale socket is', async (t) => {
  const dir = await tempDir(t);
  // A typo in transport.socket naming a file: before, the agent deleted it.
  const notASocket = join(dir, 'notes.txt');
  await writeFile(notASocket, 'keep me');
  await assert.rejects((await agentOn(t, notASocket)).start(), { code: 'SOCKET_UNSAFE' });
  assert.equal(await readFile(notASocket, 'utf8'), 'keep me');

  const livePath = join(dir, 'live.sock');
  const live = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => live.listen(livePath, resolve));
  t.after(() => live.close());
  await assert.rejects((await agentOn(t, livePath)).start(), { code: 'AGENT_ALREADY_RUNNING' });
  assert.ok((await stat(livePath)).isSocket());

  // A socket nobody listens on: its agent was killed (SIGKILL leaves the file). Connecting is refused, so it
  // is removed and the path reused.
  const stalePath = join(dir, 'stale.sock');
  const crashed = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(stalePath)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => crashed.kill('SIGKILL'));
  await new Promise((resolve) => crashed.stdout?.once('data', resolve));
  crashed.kill('SIGKILL');
  await once(crashed, 'exit');
  assert.ok((await stat(stalePath)).isSocket(), 'a stale socket file to remove');
  const agent = await agentOn(t, stalePath);
  await agent.start();
  const client = new LocalClientTransport({ socketPath: stalePath });
  t.after(() => client.close());
  assert.equal((await client.request(makeRequest({ type: 'host-info', payload: {} }))).ok, true);
});

test('local — two agents started together on one socket path: one serves, the other refuses, and its stop leaves the winner\'s socket', async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  // Each round starts from a stale socket file (an agent killed before), the case where both used to see the
  // file refuse connections, and the second removed the socket the first had just made.
  for (let round = 0; round < 8; round++) {
    const leftover = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => leftover.kill('SIGKILL'));
    await new Promise((resolve) => leftover.stdout?.once('data', resolve));
    leftover.kill('SIGKILL');
    await once(leftover, 'exit');

    const agents = [await agentOn(t, socketPath), await agentOn(t, socketPath)];
    const started = await Promise.allSettled(agents.map((agent) => agent.start()));
    const winners = started.flatMap((result, at) => (result.status === 'fulfilled' ? [at] : []));
    assert.equal(winners.length, 1, `round ${round}: ${JSON.stringify(started.map((result) => (result.status === 'fulfilled' ? 'started' : (result.reason as Error).message)))}`);
    const loser = started.find((result) => result.status === 'rejected') as PromiseRejectedResult;
    assert.equal((loser.reason as { code?: string }).code, 'AGENT_ALREADY_RUNNING', `round ${round}: ${(loser.reason as Error).message}`);

    // The loser's stop must not take the winner's socket with it.
    await agents[1 - (winners[0] as number)]?.stop('lost the race');
    assert.ok((await stat(socketPath)).isSocket(), `round ${round}: the winner's socket is gone`);
    const client = new LocalClientTransport({ socketPath });
    t.after(() => client.close());
    assert.equal((await client.request(makeRequest({ type: 'host-info', payload: {} }))).ok, true, `round ${round}`);
    await client.close();
    await agents[winners[0] as number]?.stop('round over');
  }
  // After a clean stop the path is free again (the lock went with the agent).
  const last = await agentOn(t, socketPath);
  await last.start();
  await last.stop('done');
});

const slowStartPath = fileURLToPath(new URL('../fixtures/plugins/slow-start/index.ts', import.meta.url));

/** An agent on `socketPath` with the testkit and a plugin that notes its hooks in `marker`. */
async function agentWithHooks(t: TestContext, socketPath: string, marker: string, core: Record<string, unknown> = {}): Promise<Agent> {
  const raw = {
    host: { id: 'h1' },
    transport: { kind: 'local', socket: socketPath },
    ...core,
    plugins: [
      { use: testkitPath, options: {} },
      { use: slowStartPath, options: { marker, initMs: 0 } },
    ],
  };
  const config = await loadHostConfig(rawConfigFrom(raw, join(await tempDir(t), 'cloudlet.yaml')));
  const agent = new Agent(config, { logger: createLogger({ level: 'fatal', format: 'json', destination: memoryDestination().stream }) });
  t.after(() => agent.stop('test finished'));
  return agent;
}

const hooksIn = (marker: string) => readFile(marker, 'utf8').then((text) => text.split('\n').filter(Boolean), () => []);

test('local — a second agent on a socket path is refused before any of its plugin hooks runs', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  const first = await agentWithHooks(t, socketPath, join(dir, 'first.hooks'));
  await first.start();
  // Its hooks would act on what the running agent owns (a managed dnsmasq, VMs, a metrics port).
  const second = await agentWithHooks(t, socketPath, join(dir, 'second.hooks'));
  await assert.rejects(second.start(), { code: 'AGENT_ALREADY_RUNNING' });
  await second.stop('refused');
  assert.deepEqual(await hooksIn(join(dir, 'second.hooks')), [], 'the refused agent ran plugin hooks');
  assert.deepEqual(await hooksIn(join(dir, 'first.hooks')), ['init-begun', 'init-done']);
});

test('local — an agent started while another drains on its socket path waits until that one has stopped', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  const marker = join(dir, 'hooks');
  const old = await agentWithHooks(t, socketPath, marker);
  await old.start();
  const client = new LocalClientTransport({ socketPath });
  t.after(() => client.close());
  const inFlight = client.request(makeRequest({ type: 'test.sleep', payload: { ms: 1_500 } }));
  await until(() => old.inFlight === 1, 10_000);

  const order: string[] = [];
  const stopped = old.stop('restart').then(() => void order.push('old stopped'));
  const successor = await agentWithHooks(t, socketPath, marker);
  const started = successor.start().then(() => void order.push('new started'));
  await Promise.all([stopped, started]);
  // Before: the old agent gave up its lock as its drain began, and the new one ran beside it.
  assert.deepEqual(order, ['old stopped', 'new started']);
  assert.deepEqual(await hooksIn(marker), ['init-begun', 'init-done', 'stop', 'init-begun', 'init-done']);
  assert.equal((await inFlight).ok, true, 'the draining agent\'s request was answered');
  assert.ok((await stat(socketPath)).isSocket(), 'the old agent\'s stop left the new one\'s socket');
  const fresh = new LocalClientTransport({ socketPath });
  t.after(() => fresh.close());
  assert.equal((await fresh.request(makeRequest({ type: 'host-info', payload: {} }))).ok, true);
});

test('local — the socket path\'s lock: a connection to it cannot hold up a release; one held while nothing serves the path is waited for, then done without', { timeout: 30_000 }, async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  const name = await socketLockName(socketPath);

  // Anyone can connect to an abstract socket: a connection kept open must not keep the lock (and the
  // agent's stop) waiting. A hang here ends in the test's timeout.
  const lock = await lockSocketPath(socketPath);
  assert.equal(lock.held, true);
  const lingering = createConnection(name);
  lingering.on('error', () => undefined); // the lock cuts it: ECONNRESET
  t.after(() => lingering.destroy());
  await once(lingering, 'connect');
  await lock.release();
  const again = await lockSocketPath(socketPath, { waitMs: 0 });
  assert.equal(again.held, true, 'released: the lock can be taken again');

  // Held by an agent that has not bound its socket yet: the start waits, and takes the lock once released.
  const warnings: string[] = [];
  const log = { warn: (_obj: object, message: string) => void warnings.push(message) };
  const transport = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, log, lockWaitMs: 60_000 });
  const listening = transport.listen(() => undefined);
  await again.release();
  await listening;
  assert.deepEqual(warnings, []);
  await transport.close();

  // Held by an agent of this user whose socket file was removed by hand (here: this process): a second
  // agent must not start beside it.
  const orphaned = await lockSocketPath(socketPath);
  const beside = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, log, lockWaitMs: 100 });
  await assert.rejects(beside.listen(() => undefined), (error: { code?: string; message: string }) => {
    assert.equal(error.code, 'AGENT_ALREADY_RUNNING');
    // The holder tells what it does: a lock taken by hand says what an agent's does before it listens.
    assert.match(error.message, new RegExp(`process ${process.pid} is an agent still starting on this socket path`));
    assert.equal((error as { details?: { holderState?: string } }).details?.holderState, 'starting');
    return true;
  });
  await orphaned.release();
  assert.deepEqual(warnings, []);

  // Held by another user's process that serves nothing there (any local user can take an abstract name):
  // the agent is not kept from starting; after the wait it starts without the lock, and says so.
  const squatter = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(name)}, () => console.log('up'))`], {
    stdio: ['ignore', 'pipe', 'inherit'],
    uid: 65534,
    gid: 65534,
  });
  t.after(() => squatter.kill('SIGKILL'));
  await new Promise((resolve) => squatter.stdout?.once('data', resolve));
  const blocked = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, log, lockWaitMs: 100 });
  await blocked.listen(() => undefined);
  t.after(() => blocked.close());
  assert.equal(blocked.isUp(), true);
  assert.equal(warnings.length, 1);
  assert.match(String(warnings[0]), new RegExp(`held by process ${squatter.pid} of uid 65534, which does not serve it; starting without the lock`));
  // A second agent on the same path is still refused: the first one answers there.
  const second = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, log, lockWaitMs: 100 });
  await assert.rejects(second.listen(() => undefined), { code: 'AGENT_ALREADY_RUNNING' });
});

test('local — a start waits for an agent that says it is stopping only up to stoppingWaitMs, then refuses and names it', { timeout: 30_000 }, async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  const infos: string[] = [];
  const log = { warn: () => undefined, info: (_obj: object, message: string) => void infos.push(message) };
  const stopping = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20 });
  await stopping.listen(() => undefined);
  t.after(() => stopping.close());
  await stopping.stopAccepting(); // draining: its lock says `stopping` until close()

  const impatient = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, log, lockWaitMs: 0, stoppingWaitMs: 300 });
  await assert.rejects(impatient.listen(() => undefined), (error: { code?: string; message: string; details?: Record<string, unknown> }) => {
    assert.equal(error.code, 'AGENT_ALREADY_RUNNING');
    assert.match(error.message, new RegExp(`process ${process.pid} is an agent still stopping on this socket path after the wait`));
    assert.deepEqual(error.details, { socketPath, holderPid: process.pid, holderState: 'stopping' });
    return true;
  });
  assert.deepEqual(infos, [`another agent is stopping on ${socketPath}; waiting up to 0.3 s for it to finish`]);

  const patient = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, lockWaitMs: 0, stoppingWaitMs: 60_000 });
  t.after(() => patient.close());
  let settled = false;
  const listening = patient.listen(() => undefined).finally(() => (settled = true));
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(settled, false, 'started beside an agent that had not finished stopping');
  await stopping.close();
  await listening;
  assert.equal(patient.isUp(), true);
});

test('local — a start that waits for a stopping agent is called off by its signal (LockWaitCalledOff) and takes nothing', { timeout: 30_000 }, async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  const stopping = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20 });
  await stopping.listen(() => undefined);
  t.after(() => stopping.close());
  await stopping.stopAccepting();

  const infos: string[] = [];
  const log = { warn: () => undefined, info: (_obj: object, message: string) => void infos.push(message) };
  // lockWaitMs: a holder that does not answer at once (a stall on a loaded machine) is waited for, not refused.
  const waiting = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, log, lockWaitMs: 5_000, stoppingWaitMs: 60_000 });
  t.after(() => waiting.close());
  const callOff = new AbortController();
  const reserved = waiting.reserve({ signal: callOff.signal });
  await until(() => infos.length > 0, 10_000);
  callOff.abort();
  await assert.rejects(reserved, (error: unknown) => {
    assert.ok(error instanceof LockWaitCalledOff, String(error));
    assert.equal(error.waitingFor, `the agent stopping on ${socketPath} to finish`);
    return true;
  });
  // Nothing taken: once the old agent is gone, another start takes the path.
  await stopping.close();
  const next = new LocalAgentTransport({ socketPath, hostId: 'h1', maxMessageBytes: 1 << 20, lockWaitMs: 0 });
  t.after(() => next.close());
  await next.listen(() => undefined);
  assert.equal(next.isUp(), true);
});

test('local — a lock held while nothing serves the path is gone around only when it is surely another user\'s', () => {
  // Pure decision; the searches it decides on are made in the test above (own process, another uid).
  assert.match(String(onHeldLock({ holder: { pid: 7, uid: 1000 }, uninspectedOwn: [] }, 1000).refuse), /process 7 holds the start-up lock/);
  assert.equal(onHeldLock({ holder: { pid: 7, uid: 1000 }, uninspectedOwn: [] }, 1000).details?.holderPid, 7);
  // An agent of this user that its service unit gave capabilities: its open files cannot be read, so it
  // cannot be told from a stranger, and it may be the holder.
  const hidden = onHeldLock({ uninspectedOwn: [41, 42] }, 1000);
  assert.match(String(hidden.refuse), /cloudlet agents 41, 42 of this user could not be looked into/);
  assert.deepEqual(hidden.details, { uninspectedPids: [41, 42] });
  assert.deepEqual(onHeldLock({ holder: { pid: 9, uid: 65534 }, uninspectedOwn: [] }, 0), { holder: 'process 9 of uid 65534' });
  assert.deepEqual(onHeldLock({ uninspectedOwn: [] }, 1000), { holder: 'a process this user cannot see' });
  // Which of those count: a capability-bounded root agent cannot look into pid 1 or sshd, and they must not
  // keep it from starting; only processes that run cloudlet's agent may hold its lock.
  for (const argv of [['/usr/bin/node', '/usr/bin/cloudlet', 'agent', '--config', '/etc/cloudlet/cloudlet.yaml'], ['/usr/bin/cloudlet', 'agent'], ['node', 'core/cli/bin.js', 'agent'], ['node', '/srv/cloudlet-src/core/cli/bin.js', 'agent', '--config', 'x.yaml']]) {
    assert.equal(looksLikeAgent(argv), true, argv.join(' '));
  }
  assert.equal(looksLikeAgent(['/usr/bin/cloudlet', '--config', '/etc/c.yaml', 'agent']), true, 'flags before the command');
  // `agent` as some flag's value, or as a later word, is not the agent command.
  for (const argv of [['/sbin/init'], ['/usr/sbin/sshd', '-D'], ['/usr/bin/cloudlet', 'status'], ['/usr/bin/ssh-agent'], ['node', 'agent.js', 'cloudlet'], ['/usr/bin/cloudlet', 'vm', 'list', '--host', 'agent'], ['/usr/bin/cloudlet', '--config', 'agent', 'status'], ['/usr/bin/cloudlet', 'call', 'agent']]) {
    assert.equal(looksLikeAgent(argv), false, argv.join(' '));
  }
});

test('local — a socket folder in the shared temp directory must be this user\'s own and closed to others', async (t) => {
  // Without XDG_RUNTIME_DIR the socket goes to <tmp>/cloudlet-<uid>/cloudlet/: anyone could make that
  // folder first and swap the agent's socket for their own. Here <tmp> is a temp folder of the test.
  const tmp = await tempDir(t);
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = tmp;
  t.after(() => (saved === undefined ? delete process.env.TMPDIR : (process.env.TMPDIR = saved)));
  const base = join(tmp, `cloudlet-${process.getuid?.()}`);
  const socketPath = join(base, 'cloudlet', 'agent.sock');

  for (const [what, prepare] of [
    ['owned by another user', async () => (await mkdir(base, { mode: 0o700 }), await chown(base, 2001, 2001))],
    ['writable by everyone', async () => (await mkdir(base), await chmod(base, 0o777))],
    ['a symbolic link', async () => (await mkdir(join(tmp, 'elsewhere')), await symlink(join(tmp, 'elsewhere'), base))],
  ] as const) {
    await prepare();
    await assert.rejects((await agentOn(t, socketPath)).start(), { code: 'SOCKET_UNSAFE' }, what);
    const client = new LocalClientTransport({ socketPath });
    await assert.rejects(client.request(makeRequest({ type: 'host-info', payload: {} })), { code: 'SOCKET_UNSAFE' }, `client: ${what}`);
    await import('node:fs/promises').then((fs) => fs.rm(base, { recursive: true, force: true }));
  }
  // Not there yet: the agent makes it, mode 0700, and works.
  const agent = await agentOn(t, socketPath);
  await agent.start();
  assert.equal((await stat(base)).mode & 0o777, 0o700);
  const client = new LocalClientTransport({ socketPath });
  t.after(() => client.close());
  assert.equal((await client.request(makeRequest({ type: 'host-info', payload: {} }))).ok, true);
});

test('local — a client gives up on an agent that stopped answering, and its close does not hang', { timeout: 30_000 }, async (t) => {
  // Before, close() waited for the agent to close its side: a stalled agent held the CLI forever, and the
  // CLIENT_TIMEOUT it had already decided on was never printed.
  const socketPath = join(await tempDir(t), 'mute.sock');
  const sockets: Socket[] = [];
  const mute = createServer((socket) => void sockets.push(socket)); // reads nothing, answers nothing, never closes
  await new Promise<void>((resolve) => mute.listen(socketPath, resolve));
  t.after(() => (sockets.forEach((s) => s.destroy()), mute.close()));
  const client = new LocalClientTransport({ socketPath });
  await assert.rejects(client.request(makeRequest({ type: 'host-info', payload: {}, deadline: Date.now() + 200 })), { code: 'CLIENT_TIMEOUT' });
  const started = Date.now();
  await client.close();
  assert.ok(Date.now() - started < 10_000, 'close waited for the mute agent');
});

test('local — an oversize request is refused with its own id; a reply over the client\'s limit fails its request at once', { timeout: 30_000 }, async (t) => {
  // Before, the agent answered "id": null and the client, which matched by id only, waited 30 s for a timeout.
  const { socketPath } = await startAgent(t, { ...withTestkit, limits: { maxMessageBytes: 2048 } });
  const client = new LocalClientTransport({ socketPath, inactivityTimeoutMs: 20_000 });
  t.after(() => client.close());
  const request = makeRequest({ type: 'test.echo', payload: { value: 'x'.repeat(3_000) } });
  const reply = await client.request(request);
  assert.deepEqual([reply.id, reply.error?.code], [request.id, 'MESSAGE_TOO_LARGE']);

  const { socketPath: roomy } = await startAgent(t, withTestkit);
  const small = new LocalClientTransport({ socketPath: roomy, maxMessageBytes: 1_024, inactivityTimeoutMs: 20_000 });
  t.after(() => small.close());
  await assert.rejects(small.request(makeRequest({ type: 'test.blob', payload: { bytes: 1_500 } })), { code: 'MESSAGE_TOO_LARGE', message: /this client's limit is 1024/ });
  // The connection goes on working.
  assert.equal((await small.request(makeRequest({ type: 'host-info', payload: {} }))).ok, true);
});

test('local — a reply the client cannot read (it breaks the reply schema) fails its request at once with the reason', { timeout: 30_000 }, async (t) => {
  // A stand-in agent that answers every request with a reply whose `ok` is not a boolean.
  const dir = await tempDir(t);
  const socketPath = join(dir, 'odd.sock');
  const accepted = new Set<Socket>();
  const server = createServer((socket) => {
    accepted.add(socket);
    const reader = linesOf(socket);
    socket.on('data', () => {
      for (const text of reader.splice(0)) {
        const request = JSON.parse(text) as { id: string; type: string };
        socket.write(`${JSON.stringify({ v: 1, kind: 'reply', id: request.id, type: request.type, host: 'odd', ok: 'yes' })}\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  t.after(() => {
    for (const socket of accepted) socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const client = new LocalClientTransport({ socketPath, inactivityTimeoutMs: 20_000 });
  t.after(() => client.close());
  // Before: the reply was dropped, and the request waited for its 20 s inactivity timeout (CLIENT_TIMEOUT).
  await assert.rejects(client.request(makeRequest({ type: 'test.echo', payload: {} })), (error: { code?: string; message: string }) => {
    assert.equal(error.code, 'BAD_ENVELOPE', error.message);
    assert.match(error.message, /the reply could not be read/);
    return true;
  });
});

test('local — a request or gather whose signal was aborted before the call is CANCELLED and never sent', { timeout: 30_000 }, async (t) => {
  const seen: string[] = [];
  const { client } = await startAgent(t, withTestkit, { observer: (outcome) => void seen.push(String(outcome.type)) });
  const aborted = AbortSignal.abort();
  // Before: the abort had happened already, no 'abort' event came, and the request ran and answered ok.
  await assert.rejects(client.request(makeRequest({ type: 'test.echo', payload: {} }), { signal: aborted }), { code: 'CANCELLED' });
  await assert.rejects(client.gather(makeRequest({ type: 'test.echo', payload: {} }), { signal: aborted }), { code: 'CANCELLED' });
  assert.equal((await client.request(makeRequest({ type: 'host-info', payload: {} }))).ok, true);
  assert.deepEqual(seen, ['host-info'], 'an aborted request reached the agent');
});

test('local — salvageIds reads the envelope\'s own id, type and kind from a cut-off line, never the payload\'s', () => {
  const head = (text: string) => Buffer.from(text);
  assert.deepEqual(salvageIds(head('{"v":1,"kind":"request","id":"r-1","type":"test.echo","payload":{"value":"xxxx')), { id: 'r-1', type: 'test.echo', kind: 'request' });
  assert.deepEqual(salvageIds(head('{"payload":{"id":"inner","type":"inner"},"id":"outer","kind":"reply"}')), { id: 'outer', kind: 'reply' });
  assert.deepEqual(salvageIds(head('{"v":1,"id":"cut-of')), { id: null });
  assert.deepEqual(salvageIds(head('{"id":"a\\"b","type":7}')), { id: 'a"b' });
  assert.deepEqual(salvageIds(head('yyyyyyyy')), { id: null });
  assert.deepEqual(salvageIds(head(`{"id":"${'z'.repeat(200)}"}`)), { id: null });
  // Only what a reply may carry: an id with a space or a type out of pattern would make an invalid reply.
  assert.deepEqual(salvageIds(head('{"id":"a b","type":"Create VM","kind":"request"}')), { id: null, kind: 'request' });
});

test('local — a second request with the id of one still waiting on this client is refused with DUPLICATE_ID; the first is answered', { timeout: 30_000 }, async (t) => {
  const seen: string[] = [];
  const { client } = await startAgent(t, withTestkit, { observer: (outcome) => void seen.push(String(outcome.type)) });
  const request = makeRequest({ type: 'test.sleep', payload: { ms: 300 } });
  const first = client.request(request);
  // Replies are matched by id: before, the second took the first's place, the first caller never heard
  // back (CLIENT_TIMEOUT), and the handler ran twice.
  await assert.rejects(client.request(makeRequest({ id: request.id, type: 'test.echo', payload: {} })), { code: 'DUPLICATE_ID' });
  await assert.rejects(client.gather(makeRequest({ id: request.id, type: 'test.echo', payload: {} })), { code: 'DUPLICATE_ID' });
  assert.equal((await first).ok, true);
  assert.deepEqual(seen, ['test.sleep'], 'only the first was sent');
  // Once answered, the id may be sent again (a retry).
  assert.equal((await client.request(makeRequest({ id: request.id, type: 'test.echo', payload: {} }))).ok, true);
});
