/** Shared test helpers: temp dirs, agents in-process and as child processes, raw socket clients. */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { Agent, type AgentOptions } from '../core/agent.ts';
import { loadHostConfig } from '../core/config/host-config.ts';
import { rawConfigFrom } from '../core/config/load.ts';
import { createLogger, memoryDestination } from '../core/logger.ts';
import { LocalClientTransport } from '../core/transports/local.ts';
import { parseStat } from '../plugins/sweeper/proc-scan.ts';

export const repoRoot = fileURLToPath(new URL('..', import.meta.url));
export const cliBin = join(repoRoot, 'core/cli/bin.js');
export const testkitPath = fileURLToPath(new URL('./fixtures/plugins/testkit/index.ts', import.meta.url));

/**
 * The process runs: it exists and is not a zombie. A killed process whose parent has gone is reaped by init
 * (or a subreaper) in its own time, and until then /proc and signal 0 still find it; qemu-backend counts it
 * as ended (processes.ts), and so do the tests.
 */
export function processAlive(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const state = parseStat(stat)?.state;
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/** A temp dir removed when the test ends, pass or fail. */
export async function tempDir(t: TestContext, prefix = 'cloudlet-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export interface InProcessAgent {
  agent: Agent;
  socketPath: string;
  client: LocalClientTransport;
  logs: () => Record<string, unknown>[];
  /** The log as written: what a reader of the raw JSON lines sees (duplicate keys included). */
  logText: () => string;
}

/** Starts an agent in this process on a socket in a temp dir; stopped (and its client closed) after the test. */
export async function startAgent(t: TestContext, config: Record<string, unknown> = {}, options: Pick<AgentOptions, 'observer'> = {}): Promise<InProcessAgent> {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'agent.sock');
  const hostConfig = await loadHostConfig(
    rawConfigFrom({ host: { id: 'test-host' }, transport: { kind: 'local', socket: socketPath }, ...config }, join(dir, 'cloudlet.yaml')),
  );
  const memory = memoryDestination();
  const agent = new Agent(hostConfig, { ...options, logger: createLogger({ level: 'debug', format: 'json', destination: memory.stream }) });
  let client: LocalClientTransport | undefined;
  // Registered before start: a start that fails half-way (a hook throws) still stops what did start, as
  // runAgent does.
  t.after(async () => {
    await client?.close();
    await agent.stop('test finished');
  });
  await agent.start();
  client = new LocalClientTransport({ socketPath });
  return { agent, socketPath, client, logs: memory.lines, logText: memory.text };
}

/** Sends raw lines on a fresh connection and collects the lines that come back. */
export async function rawExchange(socketPath: string, payload: string | Uint8Array, expectedLines: number, timeoutMs = 5_000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let buffer = '';
    const lines: string[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`got ${lines.length} of ${expectedLines} lines: ${JSON.stringify(lines)}`));
    }, timeoutMs);
    socket.on('data', (chunk) => {
      buffer += chunk.toString('utf8');
      let newline: number;
      while ((newline = buffer.indexOf('\n')) !== -1) {
        lines.push(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
      }
      if (lines.length >= expectedLines) {
        clearTimeout(timer);
        socket.end();
        resolve(lines);
      }
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.write(payload);
  });
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `cloudlet` command. */
export function runCli(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliBin, ...args], { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'], ...(options.cwd ? { cwd: options.cwd } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cloudlet ${args.join(' ')} did not finish in time; stderr: ${stderr}`));
    }, options.timeoutMs ?? 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface AgentProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/** Starts `cloudlet agent` as a child process and waits until it logs that it is ready; killed after the test. */
export async function spawnAgent(t: TestContext, configFile: string, env: NodeJS.ProcessEnv = {}): Promise<AgentProcess> {
  const child = spawn(process.execPath, [cliBin, 'agent', '--config', configFile], {
    env: { ...process.env, CLOUDLET_LOG_FORMAT: 'json', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const deadline = Date.now() + 20_000;
  while (!output.includes('ready as host')) {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode} before it was ready:\n${output}`);
    if (Date.now() > deadline) throw new Error(`agent not ready within 20 s:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, output: () => output, exited };
}

export async function writeConfig(dir: string, name: string, yaml: string): Promise<string> {
  const file = join(dir, name);
  // Owner-only, as a config holding a broker password must be.
  await writeFile(file, yaml, { mode: 0o600 });
  return file;
}

/**
 * Polls `done` every 50 ms until it holds; past `ms` it fails the test, naming what it waited for (`what`,
 * else the condition's source). Before, it returned quietly: every caller had to assert again afterwards,
 * and a wait whose condition never came true could pass a test that asserted something weaker after it.
 */
export async function until(done: () => boolean | Promise<boolean>, ms: number, what?: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await done())) {
    if (Date.now() >= deadline) {
      throw new assert.AssertionError({ message: `waited ${ms} ms in vain for ${what ?? String(done).replace(/\s+/g, ' ').slice(0, 200)}` });
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
