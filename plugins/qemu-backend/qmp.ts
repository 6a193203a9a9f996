/**
 * A small QMP client. QEMU serves one client per QMP socket, so a handler connects, does its commands and
 * disconnects. Commands are matched to answers by `id`; asynchronous events are ignored (stop-vm watches the
 * connection close instead). Every wait has a timeout.
 */
import { createConnection, type Socket } from 'node:net';
import { qemuError } from './errors.ts';

/** QEMU's answers are small; a line this long is a monitor gone wrong, not one to buffer further. */
const MAX_LINE_BYTES = 1024 * 1024;

interface PendingCommand {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class QmpClient {
  readonly #socket: Socket;
  readonly #pending = new Map<string, PendingCommand>();
  #buffer = '';
  /** Where in #buffer to look for the next newline: what was searched already has none. */
  #scanFrom = 0;
  #nextId = 1;
  #closed = false;
  readonly #closeWaiters = new Set<() => void>();

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.#closed = true;
      const reason = this.#failure ?? 'the QMP connection closed (QEMU exited?)';
      this.#notGreeted?.(qemuError('QMP_FAILED', this.#failure ?? 'the QMP connection closed before QEMU greeted (QEMU exiting?)'));
      for (const [, pending] of this.#pending) {
        clearTimeout(pending.timer);
        pending.reject(qemuError('QMP_FAILED', reason));
      }
      this.#pending.clear();
      for (const waiter of this.#closeWaiters) waiter();
    });
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 5_000): Promise<QmpClient> {
    const socket = createConnection(path);
    const client = new QmpClient(socket);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(qemuError('QMP_FAILED', `no QMP greeting on ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(qemuError('QMP_FAILED', `cannot connect to QMP at ${path}: ${error.message}`));
      });
      client.#greeted = () => {
        clearTimeout(timer);
        resolve();
      };
      client.#notGreeted = (error) => {
        clearTimeout(timer);
        reject(error);
      };
    });
    try {
      await client.execute('qmp_capabilities', undefined, timeoutMs);
    } catch (error) {
      // QEMU serves one QMP client at a time: a connection kept after a failed negotiation would hold the
      // monitor until the agent exits.
      client.close();
      throw error;
    }
    return client;
  }

  #greeted: (() => void) | undefined;
  #notGreeted: ((error: Error) => void) | undefined;
  /** Why this side ended the connection, for the commands it fails. */
  #failure: string | undefined;

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let newline: number;
    while ((newline = this.#buffer.indexOf('\n', this.#scanFrom)) !== -1) {
      const line = this.#buffer.slice(0, newline).trim();
      this.#buffer = this.#buffer.slice(newline + 1);
      this.#scanFrom = 0;
      if (line !== '') this.#onLine(line);
    }
    this.#scanFrom = this.#buffer.length;
    if (this.#buffer.length > MAX_LINE_BYTES) {
      this.#failure = `the monitor sent a line longer than ${MAX_LINE_BYTES} bytes`;
      this.#buffer = '';
      this.#socket.destroy();
    }
  }

  #onLine(line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      return;
    }
    // A line that is JSON but no object is nobody's answer: skipped like one that is not JSON.
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return;
    const message = parsed as Record<string, unknown>;
    if ('QMP' in message) {
      this.#greeted?.();
      this.#greeted = undefined;
      this.#notGreeted = undefined;
    } else if (typeof message.id === 'string') {
      const pending = this.#pending.get(message.id);
      if (!pending) return;
      this.#pending.delete(message.id);
      clearTimeout(pending.timer);
      if ('error' in message) {
        const error = (typeof message.error === 'object' && message.error !== null ? message.error : {}) as { class?: unknown; desc?: unknown };
        const named = (value: unknown, otherwise: string) => (typeof value === 'string' ? value : otherwise);
        pending.reject(qemuError('QMP_FAILED', `QMP ${named(error.class, 'error')}: ${named(error.desc, 'unknown')}`, { qmpError: message.error }));
      } else pending.resolve(message.return);
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.#closed) return Promise.reject(qemuError('QMP_FAILED', 'the QMP connection is closed'));
    const id = `c${this.#nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(qemuError('QMP_FAILED', `QMP "${command}" got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      this.#socket.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  /** Resolves true when QEMU closes the connection (it exited) within the timeout. */
  waitForClose(timeoutMs: number): Promise<boolean> {
    if (this.#closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.#closeWaiters.delete(done);
        resolve(false);
      }, timeoutMs);
      this.#closeWaiters.add(done);
    });
  }

  close(): void {
    this.#socket.destroy();
  }
}

/**
 * Connects, runs `use`, always disconnects: the socket is free for the next command at once.
 * `connectTimeoutMs` bounds the greeting and the capabilities negotiation, each.
 */
export async function withQmp<T>(path: string, use: (qmp: QmpClient) => Promise<T>, connectTimeoutMs?: number): Promise<T> {
  const qmp = await QmpClient.connect(path, connectTimeoutMs);
  try {
    return await use(qmp);
  } finally {
    qmp.close();
  }
}
