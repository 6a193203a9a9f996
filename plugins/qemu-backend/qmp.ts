/**
 * A small QMP client. QEMU serves one client per QMP socket, so a handler connects, does its commands and
 * disconnects. Commands are matched to answers by `id`; asynchronous events are ignored (stop-vm watches the
 * connection close instead). Every wait has a timeout.
 */
import { createConnection, type Socket } from 'node:net';
import { qemuError } from './errors.ts';

interface PendingCommand {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class QmpClient {
  readonly #socket: Socket;
  readonly #pending = new Map<string, PendingCommand>();
  #buffer = '';
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
      for (const [, pending] of this.#pending) {
        clearTimeout(pending.timer);
        pending.reject(qemuError('QMP_FAILED', 'the QMP connection closed (QEMU exited?)'));
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

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let newline: number;
    while ((newline = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, newline).trim();
      this.#buffer = this.#buffer.slice(newline + 1);
      if (line === '') continue;
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in message) {
        this.#greeted?.();
        this.#greeted = undefined;
      } else if (typeof message.id === 'string') {
        const pending = this.#pending.get(message.id);
        if (!pending) continue;
        this.#pending.delete(message.id);
        clearTimeout(pending.timer);
        if ('error' in message) {
          const error = message.error as { class?: string; desc?: string };
          pending.reject(qemuError('QMP_FAILED', `QMP ${error.class ?? 'error'}: ${error.desc ?? 'unknown'}`, { qmpError: error }));
        } else pending.resolve(message.return);
      }
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
