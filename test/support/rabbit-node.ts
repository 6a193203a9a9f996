/**
 * An isolated RabbitMQ node for fault tests: its own ports, data dir, epmd and cookie, so a test can stop,
 * start and restart it freely without disturbing the shared broker on 127.0.0.1:5672 (or the default epmd
 * on 4369). The data dir survives stop/start, so durable queues and persistent messages survive a restart.
 *
 * Linux only: uses the Debian package's scripts and /proc to find leftover processes.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import amqplib from 'amqplib';

export interface RabbitNode {
  /** The AMQP port on 127.0.0.1. */
  port: number;
  /** amqp://guest:guest@127.0.0.1:PORT */
  url: string;
  /** The Erlang node name (`<unique>@localhost`), e.g. for `pgrep -f`. */
  name: string;
  /** Stops the node gracefully (rabbitmqctl stop), killing it if that takes too long. No-op when stopped. */
  stop(): Promise<void>;
  /** Starts the node again on the same ports and data dir. No-op when running. */
  start(): Promise<void>;
  /** stop() then start(). */
  restart(): Promise<void>;
  /** Replaces the extra rabbitmq.conf lines (startRabbitNode's `conf`); they apply from the next start. */
  reconfigure(conf: string): Promise<void>;
  /** Runs `rabbitmqctl -q <args>` against this node (e.g. set_policy); its stdout, or a rejection with its stderr. */
  ctl(args: string[]): Promise<string>;
}

const RABBIT_BIN = '/usr/lib/rabbitmq/bin';
const execFileAsync = promisify(execFile);
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 20_000;
/** First starts that lose a port race (another process bound it after our check) pick new ports this often. */
const PORT_ATTEMPTS = 3;
/** Ports below the kernel's ephemeral range (32768+), so outgoing connections cannot grab them between restarts. */
const PORT_RANGE = { min: 20_000, max: 32_000 };
/** Signals that end a test process without its t.after hooks (or 'exit' listeners) running. */
const FATAL_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
/** The shared broker's ports (AMQP, epmd, dist, CLI dist range): never ours, even if momentarily free. */
const SHARED_PORTS = new Set([5672, 4369, 25672, ...Array.from({ length: 11 }, (_, i) => 35672 + i)]);

interface Ports {
  amqp: number;
  dist: number;
  epmd: number;
}

/**
 * Starts an isolated node and registers cleanup that always runs when the test ends, pass or fail:
 * stop the node, kill its epmd and any leftover processes, remove its temp dir.
 */
export async function startRabbitNode(t: TestContext, options: { name?: string; conf?: string } = {}): Promise<RabbitNode> {
  const dir = await mkdtemp(join(tmpdir(), 'cloudlet-rabbit-'));
  const label = (options.name ?? 'fault').replace(/[^A-Za-z0-9_-]/g, '-');
  const node = new IsolatedNode(dir, `cloudlet-${label}-${process.pid}-${randomBytes(3).toString('hex')}@localhost`, options.conf ?? '');
  // Registered before the first start, so a start that fails half-way is cleaned up too.
  t.after(() => node.dispose());
  await node.firstStart();
  return {
    port: node.ports.amqp,
    url: node.url,
    name: node.name,
    stop: () => node.stop(),
    start: () => node.start(),
    restart: async () => {
      await node.stop();
      await node.start();
    },
    reconfigure: (conf) => node.writeConf(conf),
    ctl: (args) => node.ctl(args),
  };
}

class IsolatedNode {
  readonly dir: string;
  readonly name: string;
  ports: Ports = { amqp: 0, dist: 0, epmd: 0 };
  #server: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #onProcessExit = (): void => this.#killEverythingSync();
  #onFatalSignal = (signal: NodeJS.Signals): void => {
    this.#killEverythingSync();
    this.#unregisterLastResort();
    // Then die of the signal as if we had never listened, unless someone else handles it (another node's listener
    // still to run, or the test's own handler).
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };

  /** Extra lines for the node's rabbitmq.conf (e.g. `max_message_size = 65536`). */
  #conf: string;

  constructor(dir: string, name: string, conf: string) {
    this.dir = dir;
    this.name = name;
    this.#conf = conf;
    // Last resort if the test process ends without running t.after (process.exit, a runner's SIGTERM, Ctrl-C):
    // the node runs in its own session and would otherwise outlive us (measured: SIGTERM to a test file's
    // process leaves beam and epmd running).
    process.once('exit', this.#onProcessExit);
    for (const signal of FATAL_SIGNALS) process.once(signal, this.#onFatalSignal);
  }

  #unregisterLastResort(): void {
    process.removeListener('exit', this.#onProcessExit);
    for (const signal of FATAL_SIGNALS) process.removeListener(signal, this.#onFatalSignal);
  }

  async ctl(args: string[]): Promise<string> {
    const { stdout } = await execFileAsync(join(RABBIT_BIN, 'rabbitmqctl'), ['-q', '-n', this.name, ...args], { env: this.#env(), timeout: STOP_TIMEOUT_MS, encoding: 'utf8' });
    return stdout;
  }

  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.ports.amqp}`;
  }

  get #running(): boolean {
    return this.#server !== undefined && this.#server.exitCode === null && this.#server.signalCode === null;
  }

  /** The first start picks ports; if the node loses a race for one of them, it retries on new ones. */
  async firstStart(): Promise<void> {
    await this.#writeFiles();
    for (let attempt = 1; ; attempt++) {
      this.ports = await pickFreePorts();
      try {
        await this.start();
        return;
      } catch (error) {
        const portTaken = /eaddrinuse|dist_port_already_used/i.test(await this.#logTail());
        await this.#killEverything();
        if (!portTaken || attempt >= PORT_ATTEMPTS) throw error;
      }
    }
  }

  async start(): Promise<void> {
    if (this.#running) return;
    const started = Date.now();
    // Output goes to a file, not a pipe: nothing to drain, and the log is there for error messages.
    const out = openSync(join(this.dir, 'server.out'), 'a');
    try {
      // detached: its own session and process group, so we can kill the whole tree (sh, beam, helpers) at once.
      this.#server = spawn(join(RABBIT_BIN, 'rabbitmq-server'), [], { env: this.#env(), detached: true, stdio: ['ignore', out, out] });
    } finally {
      closeSync(out);
    }
    const server = this.#server;
    this.#exited = new Promise((resolve) => server.once('exit', () => resolve()));
    server.unref(); // the cleanup, not the open handle, decides when the node goes away
    await this.#waitUntilReady(started);
  }

  async stop(): Promise<void> {
    if (this.#running) {
      const stopped = await run(join(RABBIT_BIN, 'rabbitmqctl'), ['-n', this.name, 'stop', this.#pidFile], this.#env(), STOP_TIMEOUT_MS);
      if (!stopped.ok || !(await settles(this.#exited, 5_000))) {
        // rabbitmqctl timed out or failed: don't leave a half-stopped node behind.
        this.#killGroup('SIGKILL');
        await settles(this.#exited, 5_000);
      }
    }
    // Only once the node is down: epmd refuses -kill while nodes are registered, and the node needs it until then.
    await this.#killEpmd();
  }

  /** Cleanup for t.after: never throws, always leaves nothing behind. */
  async dispose(): Promise<void> {
    this.#unregisterLastResort();
    await this.stop().catch(() => {});
    await this.#killEverything();
    await rm(this.dir, { recursive: true, force: true, maxRetries: 5 }).catch(() => {});
  }

  get #pidFile(): string {
    return join(this.dir, 'rabbit.pid');
  }

  /** Everything the node reads points into the temp dir, so nothing of /etc/rabbitmq or the shared node leaks in. */
  #env(): NodeJS.ProcessEnv {
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^(RABBITMQ_|ERL_)/.test(key)));
    return {
      ...inherited,
      HOME: join(this.dir, 'home'), // holds this node's own .erlang.cookie
      RABBITMQ_NODENAME: this.name,
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_NODE_PORT: String(this.ports.amqp),
      RABBITMQ_DIST_PORT: String(this.ports.dist),
      RABBITMQ_MNESIA_BASE: join(this.dir, 'mnesia'),
      RABBITMQ_LOG_BASE: join(this.dir, 'log'),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(this.dir, 'enabled_plugins'),
      // /etc/rabbitmq/rabbitmq.conf binds 5672 and /etc/rabbitmq/rabbitmq-env.conf sets the shared node's name:
      // point both (and the advanced config, which need not exist) at our own files.
      RABBITMQ_CONFIG_FILE: join(this.dir, 'rabbitmq.conf'),
      RABBITMQ_CONF_ENV_FILE: join(this.dir, 'rabbitmq-env.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: join(this.dir, 'advanced.config'),
      RABBITMQ_PID_FILE: this.#pidFile,
      // Keep the distribution listener on loopback (it defaults to 0.0.0.0), as the shared node does. The
      // otherwise unused -cloudlet_test_node flag puts the node name on beam's command line, which carries
      // neither the name nor the temp dir by default: `ps` and `pgrep -f NAME` then show which test node it is.
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: `-kernel inet_dist_use_interface {127,0,0,1} -cloudlet_test_node ${this.name}`,
      ERL_EPMD_PORT: String(this.ports.epmd),
      ERL_EPMD_ADDRESS: '127.0.0.1',
    };
  }

  async #writeFiles(): Promise<void> {
    await mkdir(join(this.dir, 'home'));
    await writeFile(join(this.dir, 'enabled_plugins'), '[].\n');
    await writeFile(join(this.dir, 'rabbitmq-env.conf'), '');
    // The listener comes from RABBITMQ_NODE_IP_ADDRESS/PORT; the file log (RABBITMQ_LOG_BASE) is enough.
    await this.writeConf(this.#conf);
  }

  async writeConf(conf: string): Promise<void> {
    this.#conf = conf;
    await writeFile(join(this.dir, 'rabbitmq.conf'), `log.console = false\n${conf}`);
  }

  /** Ready means an AMQP client can log in, not just that the port is open. */
  async #waitUntilReady(started: number): Promise<void> {
    const deadline = started + START_TIMEOUT_MS;
    let lastError: unknown;
    while (Date.now() < deadline) {
      if (!this.#running) throw await this.#startError(`exited (${this.#server?.exitCode ?? this.#server?.signalCode}) before it was ready`);
      if (await portAccepts(this.ports.amqp)) {
        try {
          const connection = await amqplib.connect(this.url, { timeout: 2_000 });
          await connection.close();
          return;
        } catch (error) {
          lastError = error; // the port opens a little before the broker accepts logins
        }
      }
      await sleep(100);
    }
    const reason = lastError instanceof Error ? ` (last AMQP error: ${lastError.message})` : '';
    throw await this.#startError(`not ready within ${START_TIMEOUT_MS / 1000} s${reason}`);
  }

  async #startError(what: string): Promise<Error> {
    return new Error(`isolated RabbitMQ node ${this.name} on port ${this.ports.amqp} ${what}\n${await this.#logTail()}`);
  }

  /** The end of the server's stdout (boot errors land there) and of its log file. */
  async #logTail(lines = 40): Promise<string> {
    const tail = async (file: string): Promise<string> => {
      const text = await readFile(file, 'utf8').catch(() => '');
      return `--- ${file} ---\n${text.trimEnd().split('\n').slice(-lines).join('\n')}`;
    };
    return [await tail(join(this.dir, 'server.out')), await tail(join(this.dir, 'log', `${this.name}.log`))].join('\n');
  }

  #killGroup(signal: NodeJS.Signals): void {
    const pid = this.#server?.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // the group is already gone
    }
  }

  async #killEpmd(): Promise<void> {
    // epmd daemonizes into its own session, so killing the node's process group does not reach it.
    // epmd refuses -kill while a node is registered, and a just-killed node stays registered for a moment
    // (~100 ms measured), so retry until its port is closed.
    if (this.ports.epmd === 0) return;
    const env = { ...process.env, ERL_EPMD_PORT: String(this.ports.epmd) };
    const deadline = Date.now() + 5_000;
    while (await portAccepts(this.ports.epmd)) {
      if (Date.now() > deadline) return; // dispose's sweep of leftover processes gets it
      await run('epmd', ['-kill'], env, 2_000);
      await sleep(100);
    }
  }

  /**
   * Hard cleanup: the process group, then epmd, then anything else still carrying this node's environment.
   * The group alone is not enough: epmd, erl_child_setup and inet_gethost each put themselves in a session of
   * their own (the last two normally exit with beam, but a SIGKILLed node is not a normal case).
   */
  async #killEverything(): Promise<void> {
    this.#killGroup('SIGKILL');
    await settles(this.#exited, 5_000);
    await this.#killEpmd();
    this.#killLeftovers();
  }

  /** Synchronous variant for process 'exit', where nothing asynchronous runs any more. */
  #killEverythingSync(): void {
    this.#killGroup('SIGKILL');
    // Not `epmd -kill`: it would refuse while the just-killed node is still registered.
    this.#killLeftovers();
    try {
      // Retries: a SIGKILLed beam may still be writing its log for a moment.
      rmSync(this.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
    } catch {
      // never throw while the process is exiting
    }
  }

  /**
   * Kills processes whose environment names this node (beam, epmd, helpers and rabbitmqctl all inherit it): whatever
   * escaped the process group, e.g. an epmd that would not die. The node name is unique per call, so this never
   * matches anything else. Synchronous so the process 'exit' handler can use it; /proc is quick to read.
   */
  #killLeftovers(): void {
    const marker = `RABBITMQ_NODENAME=${this.name}`;
    let entries: string[] = [];
    try {
      entries = readdirSync('/proc');
    } catch {
      return; // no /proc: nothing more we can find
    }
    for (const entry of entries) {
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
      try {
        if (readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0').includes(marker)) process.kill(Number(entry), 'SIGKILL');
      } catch {
        // exited meanwhile, or not ours to read
      }
    }
  }
}

/** A random block of three consecutive ports (AMQP, dist, epmd), each checked free by binding it. */
async function pickFreePorts(): Promise<Ports> {
  for (let tries = 0; tries < 50; tries++) {
    const amqp = PORT_RANGE.min + Math.floor(Math.random() * (PORT_RANGE.max - PORT_RANGE.min - 3));
    const ports = { amqp, dist: amqp + 1, epmd: amqp + 2 };
    const all = [ports.amqp, ports.dist, ports.epmd];
    if (all.some((port) => SHARED_PORTS.has(port))) continue;
    // epmd also listens on ::1, so check that address for it too.
    if ((await Promise.all([...all.map((port) => canBind(port, '127.0.0.1')), canBind(ports.epmd, '::1')])).every(Boolean)) return ports;
  }
  throw new Error('no free block of three ports found for an isolated RabbitMQ node');
}

/** True if the port can be bound on host; an address family the machine lacks (no IPv6) counts as free. */
function canBind(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'EADDRNOTAVAIL' || error.code === 'EAFNOSUPPORT'));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.setTimeout(1_000);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Runs a command to completion; ok when it exited 0 within timeoutMs, else its whole process group is killed. */
function run(command: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ ok: boolean }> {
  return new Promise((resolve) => {
    // Its own group, so a timeout also reaches what a wrapper script started (rabbitmqctl runs sh, then erl).
    const child = spawn(command, args, { env, stdio: 'ignore', detached: true });
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.once('error', () => {
      clearTimeout(timer);
      resolve({ ok: false });
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ ok: code === 0 });
    });
  });
}

/** Waits for promise up to ms; true if it settled in time. */
async function settles(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
