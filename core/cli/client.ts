/**
 * How client commands reach agents: the configured transport (with request signing when the config asks for
 * it), the host a message goes to, and replies turned into results or errors. One place, so `call`, `vm …`,
 * `image list` and `sweep` behave the same on the local socket and on RabbitMQ.
 */
import { CloudletError, cloudletError } from '../errors.ts';
import { makeRequest, type ProgressEnvelope, type ReplyEnvelope } from '../envelope.ts';
import type { CoreConfig } from '../config/schema.ts';
import { silentLogger } from '../logger.ts';
import { ownerFromPayload } from '../routing.ts';
import { withClientSecurity } from '../security/client-setup.ts';
import { createClientTransport } from '../transports/index.ts';
import type { ClientTransport, GatherResult } from '../transports/transport.ts';
import type { CliValues } from './args.ts';
import { clientConfig } from './config-source.ts';

export interface SendOptions {
  /** The request's id; undefined draws a random one. */
  id?: string | undefined;
  /** The host that must answer; undefined: the one local agent, or any host with capacity on RabbitMQ. */
  target?: string | undefined;
  /** Epoch ms: a hard deadline the agent enforces; undefined waits while the host shows signs of life. */
  deadline?: number | undefined;
  onProgress?: (progress: ProgressEnvelope) => void;
}

export interface CliClient {
  readonly config: CoreConfig;
  readonly transport: ClientTransport;
  /** True on RabbitMQ, where a message has to be routed to a host. */
  readonly routed: boolean;
  request(type: string, payload: unknown, options?: SendOptions): Promise<ReplyEnvelope>;
  /** Every live host answers (RabbitMQ broadcast); on the local transport, the one agent. */
  gather(type: string, payload: unknown, options?: SendOptions): Promise<GatherResult>;
  close(): Promise<void>;
}

/** Signed requests must carry a deadline; without --timeout they get this much time. */
const SIGNED_DEFAULT_DEADLINE_MS = 15 * 60_000;

export async function openClient(values: CliValues, options: { inactivityTimeoutMs?: number } = {}): Promise<CliClient> {
  const config = await clientConfig(values.config);
  if (values.socket !== undefined) {
    if (config.transport.kind !== 'local') throw cloudletError('USAGE', '--socket applies to the local transport only; this config uses RabbitMQ (transport.kind: amqp)');
    config.transport.socket = values.socket;
  }
  const plain = createClientTransport(config, silentLogger(), { inactivityTimeoutMs: options.inactivityTimeoutMs ?? 30_000 });
  const transport = await withClientSecurity(plain, config.security).catch(async (error: unknown) => {
    await plain.close();
    throw error;
  });
  const signs = config.security.clientKeyFile !== undefined;
  const deadlineFor = (deadline: number | undefined) => deadline ?? (signs ? Date.now() + Math.min(SIGNED_DEFAULT_DEADLINE_MS, config.security.maxDeadlineMs) : undefined);
  const progressOption = (send: SendOptions) => (send.onProgress ? { onProgress: send.onProgress } : {});
  return {
    config,
    transport,
    routed: config.transport.kind === 'amqp',
    request: (type, payload, send = {}) =>
      transport.request(makeRequest({ id: send.id, type, payload, target: send.target, deadline: deadlineFor(send.deadline) }), progressOption(send)),
    gather: (type, payload, send = {}) =>
      transport.gather(makeRequest({ type, payload, target: send.target, deadline: deadlineFor(send.deadline) }), progressOption(send)),
    close: () => transport.close(),
  };
}

/**
 * The host a message about `payload` goes to: `--host`, else (on RabbitMQ) the owner named in the VM id.
 * On the local transport there is one agent, so nothing is named unless --host asks for a check.
 */
export function targetFor(client: CliClient, host: string | undefined, payload: unknown): string | undefined {
  if (host !== undefined) return host;
  return client.routed ? ownerFromPayload(payload) : undefined;
}

/** An error reply from an agent: exit code 1, shown with its code, hint and host. */
export class ErrorReply extends Error {
  readonly error: CloudletError;
  readonly host: string;

  constructor(reply: ReplyEnvelope) {
    const error = CloudletError.fromWire(reply.error ?? { code: 'INTERNAL', message: 'error reply without an error' });
    super(error.message);
    this.name = 'ErrorReply';
    this.error = error;
    this.host = reply.host;
  }
}

/** The reply's result, or an ErrorReply thrown. */
export function resultOf<T>(reply: ReplyEnvelope): T {
  if (!reply.ok) throw new ErrorReply(reply);
  return reply.result as T;
}

/** Per-host outcome of a broadcast, in a stable shape for `--json`. */
export interface HostOutcome<T> {
  host: string;
  ok: boolean;
  result?: T;
  error?: ReturnType<CloudletError['toWire']>;
}

export function hostOutcomes<T>(gathered: GatherResult): HostOutcome<T>[] {
  return gathered.replies
    .map((reply): HostOutcome<T> =>
      reply.ok
        ? { host: reply.host, ok: true, result: reply.result as T }
        : { host: reply.host, ok: false, error: CloudletError.fromWire(reply.error ?? { code: 'INTERNAL', message: 'error reply without an error' }).toWire() },
    )
    .sort((a, b) => a.host.localeCompare(b.host));
}

/** Why a host is in a gather's `missing`: it did not answer, or only replies this client does not trust came. */
export function whyMissing(gathered: GatherResult, host: string): string {
  const untrusted = gathered.untrusted?.find((entry) => entry.host === host);
  return untrusted ? `answered, but with no reply this client trusts: ${untrusted.reason}` : 'did not answer';
}

/** `untrusted` for a command's JSON output, when a checking client dropped any host's replies. */
export function untrustedField(gathered: GatherResult): { untrusted?: GatherResult['untrusted'] } {
  return gathered.untrusted ? { untrusted: gathered.untrusted } : {};
}

/**
 * Warns of hosts that are down, so were not asked: a list without them would look complete ("no VMs", exit
 * 0) while their VMs may still run. Returns the JSON field. They are not `missing` (which is for hosts
 * expected to answer): a host taken out of service would make every list fail.
 */
export function noteDownHosts(gathered: GatherResult, output: { note(text: string): void }, what: string): { down?: GatherResult['down'] } {
  for (const { host, agoMs } of gathered.down ?? []) output.note(`warning: ${host} is down (last heard ${describeAgo(agoMs)} ago): its ${what} are not listed`);
  return gathered.down ? { down: gathered.down } : {};
}

function describeAgo(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 86_400_000) return `${Math.round(ms / 3_600_000)} h`;
  return `${Math.round(ms / 86_400_000)} d`;
}

export function deadlineAfter(timeoutMs: number | undefined): number | undefined {
  return timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
}
