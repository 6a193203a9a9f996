/**
 * The embedded transport: the agent listens on a unix socket and speaks newline-delimited JSON envelopes.
 * One host works with nothing else installed; the CLI and tests talk to the agent through it.
 */
import { Buffer } from 'node:buffer';
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { CloudletError, cloudletError } from '../errors.ts';
import {
  decodeEnvelope,
  encodeEnvelope,
  makeReply,
  type EventEnvelope,
  type ReplyEnvelope,
  type RequestEnvelope,
  type ProgressEnvelope,
} from '../envelope.ts';
import { PROTOCOL_VERSION } from '../version.ts';
import { FrameReader, salvageIds } from './ndjson.ts';
import { checkSocketFolder, lockSocketPath, removeStaleSocket, type SocketPathLock } from './socket-path.ts';
import type { AgentTransport, ClientTransport, DeliveryListener, GatherOptions, GatherResult, ReplySealer, RequestOptions } from './transport.ts';
import { InFlightIds } from './in-flight-ids.ts';


/**
 * Requests in flight (read, and not yet answered or not yet handed to the kernel) at which the agent stops
 * reading a connection until some are done: a client that pipelines thousands waits, and one that never
 * reads its replies holds a bounded amount of the agent's memory.
 */
const READ_PAUSE_IN_FLIGHT = 256;

/**
 * Bytes of replies and events waiting to be read by one peer before the agent holds back: it stops reading
 * that connection's requests (until the peer reads again), and cuts off a subscriber that does not keep up.
 * A peer that never reads must not make the agent's memory grow without end.
 */
export function unreadLimit(maxMessageBytes: number): number {
  return Math.max(8 * 1024 * 1024, 2 * maxMessageBytes);
}

export interface LocalAgentTransportOptions {
  socketPath: string;
  hostId: string;
  maxMessageBytes: number;
  /** Hears of a start without the socket path's lock, or of waiting for an agent that is stopping (socket-path.ts, lockSocketPath). */
  log?: { warn(obj: object, msg: string): void; info?(obj: object, msg: string): void };
  /** How long a start waits for the socket path's lock while nothing serves the path (default 2 s). */
  lockWaitMs?: number;
  /** How long a start waits for an agent that is stopping on the path (default lockWaitMs). */
  stoppingWaitMs?: number;
}

export class LocalAgentTransport implements AgentTransport {
  readonly kind = 'local';
  readonly #options: LocalAgentTransportOptions;
  #server: Server | undefined;
  readonly #connections = new Set<Socket>();
  readonly #subscribers = new Set<Socket>();
  /** Bytes of events written to each subscriber and not yet taken by the kernel. */
  readonly #eventBacklog = new Map<Socket, number>();
  #sealReply: ReplySealer | undefined;
  #lock: SocketPathLock | undefined;

  constructor(options: LocalAgentTransportOptions) {
    this.#options = options;
  }

  describe(): string {
    return `unix:${this.#options.socketPath}`;
  }

  isUp(): boolean {
    return this.#server?.listening ?? false;
  }

  /**
   * Takes the socket path's lock and clears a stale socket, before the agent's plugins start: a second agent
   * on the path is refused before its hooks act on what the first one runs. Held until close().
   */
  async reserve(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#lock) return;
    const { socketPath } = this.#options;
    await checkSocketFolder(socketPath, { create: true });
    await mkdir(dirname(socketPath), { recursive: true, mode: 0o750 });
    const lock = await lockSocketPath(socketPath, {
      ...(this.#options.lockWaitMs === undefined ? {} : { waitMs: this.#options.lockWaitMs }),
      ...(this.#options.stoppingWaitMs === undefined ? {} : { stoppingWaitMs: this.#options.stoppingWaitMs }),
      ...(options.signal ? { signal: options.signal } : {}),
      onWaiting: (message) => this.#options.log?.info?.({ socketPath }, message),
      onUnavailable: (message) => this.#options.log?.warn({ socketPath }, message),
    });
    try {
      await removeStaleSocket(socketPath);
    } catch (error) {
      await lock.release();
      throw error;
    }
    this.#lock = lock;
  }

  async listen(onDelivery: DeliveryListener, sealReply?: ReplySealer): Promise<void> {
    const { socketPath } = this.#options;
    this.#sealReply = sealReply;
    await this.reserve();
    const lock = this.#lock as SocketPathLock;
    // Half-open: a client may end its side once it has sent its requests (socat, `printf … | nc -U`) and
    // still read the replies; the agent ends its side once they are all written.
    const server = createServer({ allowHalfOpen: true }, (socket) => this.#accept(socket, onDelivery));
    try {
      // Again: without the lock (another user squats its name) a file may have appeared since reserve.
      await removeStaleSocket(socketPath);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EADDRINUSE') throw error;
        // Not an agent (it would hold the lock): something else made a file there after the check.
        throw cloudletError('AGENT_ALREADY_RUNNING', `${socketPath} was taken while the agent started; configure another transport.socket`, { socketPath });
      });
      // Owner and group only: whoever can write to the socket can command this host.
      await chmod(socketPath, 0o660);
    } catch (error) {
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
      // The lock stays until close(): the agent's stop hooks still run after a failed start.
      throw error;
    }
    this.#server = server;
    lock.setState('running');
  }

  #accept(socket: Socket, onDelivery: DeliveryListener): void {
    this.#connections.add(socket);
    /** Requests read and not yet answered, or answered but not yet handed to the kernel (the peer is slow to read). */
    let inFlight = 0;
    let peerEnded = false;
    const limit = unreadLimit(this.#options.maxMessageBytes);
    // The socket stops delivering chunks, and the reader stops at the frame it is on (not at the end of the
    // chunk it was reading): at most READ_PAUSE_IN_FLIGHT requests are taken that the peer has not read.
    const holdBack = () => {
      if (!reader.paused && (inFlight >= READ_PAUSE_IN_FLIGHT || socket.writableLength > limit)) {
        reader.pause();
        socket.pause();
      }
    };
    const release = () => {
      // A gone client's held requests are not worth running: nobody reads their replies.
      if (socket.destroyed) return;
      if (reader.paused && inFlight < READ_PAUSE_IN_FLIGHT && socket.writableLength <= limit) {
        socket.resume();
        reader.resume();
        endIfDone();
      }
    };
    socket.on('drain', release);
    // Not while lines wait in the paused reader: they are requests still to answer.
    const endIfDone = () => {
      if (peerEnded && inFlight === 0 && !reader.paused && !this.#subscribers.has(socket) && !socket.destroyed) socket.end();
    };
    const write = (envelope: ReplyEnvelope | ProgressEnvelope | EventEnvelope, encoded = encodeEnvelope(envelope), written?: () => void) => {
      if (socket.destroyed || !socket.writable) {
        written?.();
        return;
      }
      // `written` runs once the line is with the kernel (or the socket failed): only then is a reply done.
      socket.write(`${encoded}\n`, written);
      holdBack();
    };
    /** A reply the transport makes itself, signed like the dispatcher's when the host signs replies. */
    const ownReply = (reply: ReplyEnvelope) => {
      const sealed = this.#sealReply?.(reply);
      write(sealed?.reply ?? reply, sealed?.encoded);
    };
    const reader: FrameReader = new FrameReader(this.#options.maxMessageBytes, {
      onOversize: (size, head) =>
        ownReply(
          // The id, when the line's start shows it, lets the caller match the refusal to its request.
          makeReply(salvageIds(head), this.#options.hostId, {
            ok: false,
            error: cloudletError('MESSAGE_TOO_LARGE', `message is ${size} bytes; the limit is ${this.#options.maxMessageBytes}`, {
              size,
              maxBytes: this.#options.maxMessageBytes,
            }).toWire(),
          }),
        ),
      onFrame: (line) => {
        if (isSubscribeFrame(line)) {
          this.#subscribers.add(socket);
          return;
        }
        inFlight++;
        holdBack();
        let replied = false;
        onDelivery({
          body: line,
          replyable: true,
          sender: { transport: 'unix', socket: this.#options.socketPath },
          reply: async (envelope, encoded) => {
            if (replied) return;
            replied = true;
            write(envelope, encoded, () => {
              inFlight--;
              release();
              endIfDone();
            });
          },
          progress: (envelope) => write(envelope),
        });
      },
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.on('end', () => {
      peerEnded = true;
      reader.end();
      endIfDone();
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.#connections.delete(socket);
      this.#subscribers.delete(socket);
      this.#eventBacklog.delete(socket);
    });
  }

  async stopAccepting(): Promise<void> {
    // A start that finds the lock held now waits for this agent to finish stopping (close releases it).
    this.#lock?.setState('stopping');
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    // The listener closes now; existing connections stay open so in-flight replies reach their callers.
    // (server.close's callback waits for every connection, so it is not awaited here.)
    // Frames still arriving on them are answered by the dispatcher with SHUTTING_DOWN, never dropped.
    // Node (libuv) removes the socket file as the listener closes, whatever file is at the path by then; this
    // is for a runtime that does not. Only an agent started without the lock could have a successor there.
    server.close();
    await unlink(this.#options.socketPath).catch(() => undefined);
  }

  async publishEvent(event: EventEnvelope): Promise<void> {
    const line = `${encodeEnvelope(event)}\n`;
    const limit = unreadLimit(this.#options.maxMessageBytes);
    const bytes = Buffer.byteLength(line);
    for (const socket of this.#subscribers) {
      if (!socket.writable) continue;
      // A subscriber that stopped reading is cut off (it sees the connection close) rather than queued for.
      // Only its unread events count: replies waiting on the same connection are held back by flow control.
      const backlog = this.#eventBacklog.get(socket) ?? 0;
      if (backlog > limit) {
        socket.destroy();
        continue;
      }
      this.#eventBacklog.set(socket, backlog + bytes);
      socket.write(line, () => this.#eventBacklog.set(socket, (this.#eventBacklog.get(socket) ?? bytes) - bytes));
    }
  }

  async close(): Promise<void> {
    await this.stopAccepting();
    const closed = [...this.#connections].map(
      (socket) =>
        new Promise<void>((resolve) => {
          socket.once('close', () => resolve());
          socket.end();
          // A peer that never reads cannot hold the agent open.
          setTimeout(() => socket.destroy(), 1_000).unref();
        }),
    );
    await Promise.all(closed);
    // Last: the agent's stop hooks and threads are done (Agent calls close at the very end of its stop), so
    // a successor waiting for the lock starts only now.
    const lock = this.#lock;
    this.#lock = undefined;
    await lock?.release();
  }
}

function isSubscribeFrame(frame: Buffer): boolean {
  if (!frame.includes('"subscribe"')) return false;
  try {
    const value = JSON.parse(frame.toString('utf8')) as { kind?: unknown; v?: unknown };
    return value.kind === 'subscribe' && value.v === PROTOCOL_VERSION;
  } catch {
    return false;
  }
}

/** How long a closing client waits, by default, for the agent to close its side. */
const CLOSE_GRACE_MS = 1_000;

/** Slack after the deadline for the agent's own DEADLINE_EXCEEDED reply to arrive before the client gives up. */
const CLIENT_DEADLINE_SLACK_MS = 2_000;

interface PendingRequest {
  resolve(reply: ReplyEnvelope): void;
  reject(error: CloudletError): void;
  onProgress(progress: ProgressEnvelope): void;
}

export class LocalClientTransport implements ClientTransport {
  readonly kind = 'local';
  readonly #socketPath: string;
  readonly #maxMessageBytes: number;
  readonly #inactivityTimeoutMs: number;
  readonly #closeGraceMs: number;
  #socket: Promise<Socket> | undefined;
  readonly #pending = new Map<string, PendingRequest>();
  /** Replies are matched by id: one call per id at a time (in-flight-ids.ts). */
  readonly #inFlight = new InFlightIds();
  readonly #eventListeners = new Set<(event: EventEnvelope) => void>();
  /** A socket being closed that waits only for the answers still due on it. */
  #closingSocket: Socket | undefined;

  constructor(options: { socketPath: string; maxMessageBytes?: number; inactivityTimeoutMs?: number; closeGraceMs?: number }) {
    this.#socketPath = options.socketPath;
    this.#maxMessageBytes = options.maxMessageBytes ?? 64 * 1024 * 1024;
    this.#inactivityTimeoutMs = options.inactivityTimeoutMs ?? 30_000;
    this.#closeGraceMs = options.closeGraceMs ?? CLOSE_GRACE_MS;
  }

  #connect(): Promise<Socket> {
    this.#socket ??= checkSocketFolder(this.#socketPath, { create: false }).then(() => this.#open());
    // A refused folder is refused again next time: nothing is kept.
    this.#socket.catch(() => (this.#socket = undefined));
    return this.#socket;
  }

  #open(): Promise<Socket> {
    return new Promise<Socket>((resolve, reject) => {
      const socket = createConnection(this.#socketPath);
      socket.once('connect', () => {
        socket.off('error', onConnectError);
        socket.on('error', () => undefined);
        resolve(socket);
      });
      const onConnectError = (error: NodeJS.ErrnoException) => {
        this.#socket = undefined;
        reject(
          cloudletError(
            'AGENT_UNREACHABLE',
            `no agent answers on ${this.#socketPath} (${error.code ?? error.message}); is it running? Start one with "cloudlet agent --config FILE"`,
            { socketPath: this.#socketPath, cause: error.code },
            error,
          ),
        );
      };
      socket.once('error', onConnectError);
      const reader = new FrameReader(this.#maxMessageBytes, {
        onOversize: (size, head) => this.#onOversize(size, head),
        onFrame: (line) => this.#onFrame(line),
      });
      socket.on('data', (chunk: Buffer) => reader.push(chunk));
      socket.on('close', () => {
        this.#socket = undefined;
        for (const [id, pending] of this.#pending) {
          this.#pending.delete(id);
          pending.reject(cloudletError('CONNECTION_LOST', `the connection to ${this.#socketPath} closed before the reply to ${id} arrived`));
        }
      });
    });
  }

  /** Called whenever a request stops waiting: a closing socket goes once nothing is due on it any more. */
  #afterSettle(): void {
    if (this.#closingSocket && this.#pending.size === 0) {
      this.#closingSocket.destroy();
      this.#closingSocket = undefined;
    }
  }

  /** A reply over this client's limit: its request fails now, rather than waiting for a timeout. */
  #onOversize(size: number, head: Buffer): void {
    const salvaged = salvageIds(head);
    // Progress and events that are too large are dropped, as the agent drops them; only a reply ends a wait.
    if (salvaged.kind === 'progress' || salvaged.kind === 'event') return;
    const id = this.#waitingFor(salvaged.id);
    const pending = id === undefined ? undefined : this.#pending.get(id);
    if (!pending || id === undefined) return;
    this.#pending.delete(id);
    pending.reject(
      cloudletError('MESSAGE_TOO_LARGE', `the reply is ${size} bytes; this client's limit is ${this.#maxMessageBytes} (limits.maxMessageBytes)`, {
        size,
        maxBytes: this.#maxMessageBytes,
      }),
    );
  }

  /** A reply that breaks the reply schema: its request fails now with the reason, not at its timeout. */
  #onUnreadableReply(id: string | null, error: CloudletError): void {
    const waiting = this.#waitingFor(id);
    const pending = waiting === undefined ? undefined : this.#pending.get(waiting);
    if (!pending || waiting === undefined) return;
    this.#pending.delete(waiting);
    pending.reject(new CloudletError(error.code, `the reply could not be read: ${error.message}`, { details: error.details, cause: error }));
  }

  /**
   * The waiting request an answer is for: the one with its id, or, for an answer without one (a line the
   * agent could not read), the only request waiting. With several waiting, none can be told apart: they
   * wait for their own answers or their timeouts.
   */
  #waitingFor(id: string | null): string | undefined {
    if (id !== null) return this.#pending.has(id) ? id : undefined;
    return this.#pending.size === 1 ? (this.#pending.keys().next().value as string) : undefined;
  }

  #onFrame(frame: Buffer): void {
    const line = frame.toString('utf8');
    let kind: unknown;
    try {
      kind = (JSON.parse(line) as { kind?: unknown }).kind;
    } catch {
      return;
    }
    if (kind === 'reply') {
      const decoded = decodeEnvelope(line, 'reply', this.#maxMessageBytes);
      if (!decoded.ok) return this.#onUnreadableReply(decoded.id, decoded.error);
      const id = this.#waitingFor(decoded.envelope.id);
      const pending = id === undefined ? undefined : this.#pending.get(id);
      if (!pending || id === undefined) return;
      this.#pending.delete(id);
      pending.resolve(decoded.envelope);
    } else if (kind === 'progress') {
      const decoded = decodeEnvelope(line, 'progress', this.#maxMessageBytes);
      if (decoded.ok) this.#pending.get(decoded.envelope.id)?.onProgress(decoded.envelope);
    } else if (kind === 'event') {
      const decoded = decodeEnvelope(line, 'event', this.#maxMessageBytes);
      if (decoded.ok) for (const listener of this.#eventListeners) listener(decoded.envelope);
    }
  }

  request(request: RequestEnvelope, options: RequestOptions = {}): Promise<ReplyEnvelope> {
    return this.#inFlight.run(request.id, () => this.#request(request, options));
  }

  gather(request: RequestEnvelope, options: GatherOptions = {}): Promise<GatherResult> {
    return this.#inFlight.run(request.id, () => this.#gather(request, options));
  }

  async #request(request: RequestEnvelope, options: RequestOptions): Promise<ReplyEnvelope> {
    const body = encodeEnvelope(request);
    const size = Buffer.byteLength(body);
    if (size > this.#maxMessageBytes) {
      throw cloudletError('MESSAGE_TOO_LARGE', `the request is ${size} bytes; the limit is ${this.#maxMessageBytes}`, { size, maxBytes: this.#maxMessageBytes });
    }
    const line = `${body}\n`;
    // An abort before the call (or while it connects) is never an 'abort' event the wait below could hear.
    const cancelled = () => cloudletError('CANCELLED', `the request ${request.id} was cancelled by the caller`);
    if (options.signal?.aborted) throw cancelled();
    const socket = await this.#connect();
    if (options.signal?.aborted) throw cancelled();
    return new Promise<ReplyEnvelope>((resolve, reject) => {
      const giveUp = (message: string) => {
        clearTimeout(timer);
        clearTimeout(inactivity);
        this.#pending.delete(request.id);
        this.#afterSettle();
        reject(cloudletError('CLIENT_TIMEOUT', message, { id: request.id }));
      };
      // A deadline bounds the wait; without one, the wait lasts while the agent shows signs of life
      // (progress, or the "alive" it sends every few seconds while working).
      const waitMs = request.deadline === undefined ? undefined : Math.max(0, request.deadline - Date.now()) + CLIENT_DEADLINE_SLACK_MS;
      const timer = waitMs === undefined ? undefined : setTimeout(() => giveUp(`no reply to "${request.type}" (${request.id}) within ${waitMs} ms`), waitMs);
      let inactivity: ReturnType<typeof setTimeout> | undefined;
      const armInactivity = () => {
        if (waitMs !== undefined) return;
        clearTimeout(inactivity);
        inactivity = setTimeout(
          () => giveUp(`no reply or sign of life for "${request.type}" (${request.id}) within ${this.#inactivityTimeoutMs} ms`),
          this.#inactivityTimeoutMs,
        );
      };
      armInactivity();
      const onAbort = () => {
        clearTimeout(timer);
        clearTimeout(inactivity);
        this.#pending.delete(request.id);
        this.#afterSettle();
        reject(cancelled());
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#pending.set(request.id, {
        resolve: (reply) => {
          clearTimeout(timer);
          clearTimeout(inactivity);
          options.signal?.removeEventListener('abort', onAbort);
          this.#afterSettle();
          resolve(reply);
        },
        reject: (error) => {
          clearTimeout(timer);
          clearTimeout(inactivity);
          options.signal?.removeEventListener('abort', onAbort);
          this.#afterSettle();
          reject(error);
        },
        onProgress: (progress) => {
          armInactivity();
          if (progress.stage !== 'alive' && progress.stage !== 'accepted') options.onProgress?.(progress);
        },
      });
      socket.write(line);
    });
  }

  /** One host behind a local socket: gathering is a single request. */
  async #gather(request: RequestEnvelope, options: GatherOptions): Promise<GatherResult> {
    try {
      const reply = await this.#request(request, options);
      if (options.accept?.(reply) === false) return { replies: [], missing: [request.target ?? reply.host] };
      options.onReply?.(reply);
      return { replies: [reply], missing: [] };
    } catch (error) {
      if (error instanceof CloudletError && error.code === 'CLIENT_TIMEOUT') return { replies: [], missing: [request.target ?? 'local'] };
      throw error;
    }
  }

  async subscribe(onEvent: (event: EventEnvelope) => void): Promise<() => Promise<void>> {
    const socket = await this.#connect();
    if (this.#eventListeners.size === 0) socket.write(`${JSON.stringify({ v: PROTOCOL_VERSION, kind: 'subscribe' })}\n`);
    this.#eventListeners.add(onEvent);
    return async () => {
      this.#eventListeners.delete(onEvent);
    };
  }

  async close(): Promise<void> {
    const socket = await this.#socket?.catch(() => undefined);
    if (!socket) return;
    await new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
      // Nothing more to wait for once our side is flushed and no answer is due: the agent keeps its side
      // open while a request of ours still runs there (a cancelled one, say), which is not ours to wait on.
      socket.once('finish', () => {
        if (this.#pending.size === 0) socket.destroy();
        else this.#closingSocket = socket; // the last answer due ends it (#afterSettle)
      });
      socket.end();
      // An agent that stopped answering (stalled, stopped with SIGSTOP) never closes its side: do not wait on it.
      setTimeout(() => socket.destroy(), this.#closeGraceMs).unref();
    });
  }
}
