/**
 * How a `sweep-now` handler (a worker thread) has the sweep run by the agent's main thread: a BroadcastChannel
 * named for this agent (host id and start time). The main thread owns what a sweep must share with the
 * schedule — one run at a time, the cumulative counters, ctx.emitEvent, and ctx.dispatch to qemu-backend —
 * so the handler asks it rather than sweeping on its own. Both sides validate what they receive.
 */
import { z, type HostIdentity } from '../../core/plugin-api.ts';
import { sweeperError } from './errors.ts';
import { sweepNowPayload, type SweepNowPayload, type SweepResult } from './schemas.ts';

export function relayChannelName(host: Pick<HostIdentity, 'id' | 'startedAt'>): string {
  return `cloudlet.sweeper.${host.id}.${host.startedAt}`;
}

const id = z.string().min(1).max(64);
const wireError = z.object({ code: z.string(), message: z.string(), details: z.unknown().optional() });

const toMain = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('sweep'), id, payload: sweepNowPayload }),
  z.object({ kind: z.literal('cancel'), id, reason: z.string() }),
]);
const toWorker = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('accepted'), id }),
  z.object({ kind: z.literal('progress'), id, stage: z.string(), detail: z.record(z.string(), z.unknown()).optional() }),
  z.object({ kind: z.literal('result'), id, result: z.unknown() }),
  z.object({ kind: z.literal('error'), id, error: wireError }),
]);

export type ToMain = z.output<typeof toMain>;
export type ToWorker = z.output<typeof toWorker>;

function unref(channel: InstanceType<typeof BroadcastChannel>): void {
  (channel as { unref?: () => void }).unref?.();
}

export interface RelayRequestHandler {
  (payload: SweepNowPayload, options: { signal: AbortSignal; onProgress: (stage: string, detail?: Record<string, unknown>) => void }): Promise<SweepResult>;
}

/** Main thread: answers sweep requests until the returned function closes the channel. */
export function serveRelay(host: HostIdentity, handle: RelayRequestHandler, onBadMessage: (error: unknown) => void): () => void {
  const channel = new BroadcastChannel(relayChannelName(host));
  unref(channel);
  const running = new Map<string, AbortController>();
  const post = (message: ToWorker) => channel.postMessage(message);
  channel.addEventListener('message', (event: Event) => {
    const parsed = toMain.safeParse((event as MessageEvent).data);
    if (!parsed.success) {
      // Other threads' replies on the same channel are not for us; anything else is a bug worth a log line.
      if (!toWorker.safeParse((event as MessageEvent).data).success) onBadMessage(parsed.error);
      return;
    }
    const message = parsed.data;
    if (message.kind === 'cancel') {
      running.get(message.id)?.abort(new Error(message.reason));
      return;
    }
    const controller = new AbortController();
    running.set(message.id, controller);
    post({ kind: 'accepted', id: message.id });
    handle(message.payload, {
      signal: controller.signal,
      onProgress: (stage, detail) => post(detail === undefined ? { kind: 'progress', id: message.id, stage } : { kind: 'progress', id: message.id, stage, detail }),
    })
      .then((result) => post({ kind: 'result', id: message.id, result }))
      .catch((error: unknown) => {
        const { code, message: text, details } = error as { code?: unknown; message?: unknown; details?: unknown };
        post({ kind: 'error', id: message.id, error: { code: typeof code === 'string' ? code : 'INTERNAL', message: String(text ?? error), details } });
      })
      .finally(() => running.delete(message.id));
  });
  return () => {
    for (const controller of running.values()) controller.abort(new Error('the agent is stopping'));
    channel.close();
  };
}

export interface RequestOptions {
  signal: AbortSignal;
  onProgress: (stage: string, detail?: Record<string, unknown>) => void;
  /** How long the main thread has to take the request before SWEEPER_NOT_RUNNING (default 5 s). */
  acceptTimeoutMs?: number;
}

/** Worker side: asks the main thread to sweep and waits for its result. */
export function requestSweep(host: HostIdentity, payload: SweepNowPayload, options: RequestOptions): Promise<SweepResult> {
  const channel = new BroadcastChannel(relayChannelName(host));
  const requestId = crypto.randomUUID();
  return new Promise<SweepResult>((resolve, reject) => {
    const finish = (outcome: () => void) => {
      clearTimeout(acceptTimer);
      options.signal.removeEventListener('abort', onAbort);
      channel.close();
      outcome();
    };
    const acceptTimer = setTimeout(
      () => finish(() => reject(sweeperError('SWEEPER_NOT_RUNNING', `no sweeper answered in the main thread of agent "${host.id}" (is it stopping?)`))),
      options.acceptTimeoutMs ?? 5_000,
    );
    const onAbort = () => {
      channel.postMessage({ kind: 'cancel', id: requestId, reason: String((options.signal.reason as Error | undefined)?.message ?? 'cancelled') } satisfies ToMain);
      finish(() => reject(options.signal.reason));
    };
    options.signal.addEventListener('abort', onAbort, { once: true });
    channel.addEventListener('message', (event: Event) => {
      const parsed = toWorker.safeParse((event as MessageEvent).data);
      if (!parsed.success || parsed.data.id !== requestId) return;
      const message = parsed.data;
      if (message.kind === 'accepted') clearTimeout(acceptTimer);
      else if (message.kind === 'progress') options.onProgress(message.stage, message.detail);
      else if (message.kind === 'result') finish(() => resolve(message.result as SweepResult));
      else finish(() => reject(Object.assign(new Error(message.error.message), { code: message.error.code, details: message.error.details })));
    });
    if (options.signal.aborted) return onAbort();
    channel.postMessage({ kind: 'sweep', id: requestId, payload } satisfies ToMain);
  });
}
