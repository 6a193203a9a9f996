import { readFile } from 'node:fs/promises';
import { CloudletError, cloudletError } from '../../errors.ts';
import { hostIdSchema, makeRequest, messageTypeSchema, type ProgressEnvelope } from '../../envelope.ts';
import { chooseRoute, ownerFromPayload } from '../../routing.ts';
import type { ClientTransport, GatherResult } from '../../transports/transport.ts';
import type { ReplyEnvelope } from '../../envelope.ts';
import { createClientTransport } from '../../transports/index.ts';
import { defaultSocketPath } from '../../transports/local.ts';
import { clientConfig } from '../config-source.ts';
import { silentLogger } from '../../logger.ts';
import { EXIT } from '../exit-codes.ts';
import type { CommandContext } from '../main.ts';

export const callUsage = `cloudlet call TYPE [--payload JSON | --payload-file FILE] [--host HOST] [--timeout MS]
             [--wait-ip] [--config FILE] [--socket PATH] [--json]
  Sends one message of TYPE and prints the reply's result; progress goes to stderr. On RabbitMQ, --host sends
  it to that host; without it, broadcast types (routing.broadcast) go to every live host and print each
  host's answer, any-host types (routing.any) go to one host with capacity. --timeout MS is the deadline
  (default: wait while the host shows signs of life, up to 30 s of silence). With --json, prints the whole
  reply envelope (or {replies, missing}). --wait-ip: after a VM command succeeded, wait for the VM's address
  (get-vm-ip on its host) and add it to the result. Exit 0 on success, 1 when a host answered with an error.`;

export async function callCommand({ positionals, values, output }: CommandContext): Promise<number> {
  const [type, ...extra] = positionals;
  if (!type || extra.length > 0) throw cloudletError('USAGE', `expected exactly one message TYPE\n${callUsage}`);
  if (!messageTypeSchema.safeParse(type).success) {
    throw cloudletError('USAGE', `"${type}" is not a message type name: lowercase words joined by "-" or ".", e.g. host-info`);
  }
  const payload = await readPayload(values.payload, values['payload-file']);
  const timeoutMs = values.timeout === undefined ? 30_000 : Number(values.timeout);
  // (validated below; on the local transport it bounds the wait too)
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 86_400_000) {
    throw cloudletError('USAGE', `--timeout must be a whole number of milliseconds between 1 and 86400000, found "${values.timeout}"`);
  }
  if (values.host !== undefined && !hostIdSchema.safeParse(values.host).success) {
    throw cloudletError('USAGE', `--host "${values.host}" is not a host id: lowercase letters, digits and "-", 1–63 characters`);
  }

  const config = await clientConfig(values.config);
  if (values.socket && config.transport.kind === 'local') config.transport.socket = values.socket;
  // A VM's id names its host: commands about a VM go straight to the owner without --host.
  const target = values.host ?? (config.transport.kind === 'amqp' ? ownerFromPayload(payload) : undefined);
  const route = chooseRoute(config, type, target);
  const transport = createClientTransport(config, silentLogger(), { inactivityTimeoutMs: timeoutMs });
  const onProgress = (progress: ProgressEnvelope) =>
    output.note(`… ${progress.host}: ${progress.stage}${progress.detail ? ` ${JSON.stringify(progress.detail)}` : ''}`);
  try {
    // With --timeout the agent gets a hard deadline; without it, waiting lasts as long as the host shows signs of life.
    const deadline = values.timeout === undefined ? undefined : Date.now() + timeoutMs;
    const request = makeRequest({ type, payload, deadline, target });
    if (route === 'broadcast') return await printGathered(await transport.gather(request, { onProgress }), output);
    let reply = await transport.request(request, { onProgress });
    if (reply.ok && values['wait-ip']) reply = await waitForIp(transport, reply, payload, onProgress);
    if (reply.ok) {
      output.result(reply.result === undefined ? '(no result)' : JSON.stringify(reply.result, null, 2), reply);
      return EXIT.OK;
    }
    const error = CloudletError.fromWire(reply.error ?? { code: 'INTERNAL', message: 'error reply without an error' });
    if (output.json) output.result('', reply);
    else output.error(error);
    return EXIT.ERROR_REPLY;
  } finally {
    await transport.close();
  }
}

/**
 * `--wait-ip`: after a command about a VM (create-vm, start-vm, …) succeeded, ask the VM's host for its
 * address, waiting until one is known, and add `addresses` to the result.
 */
async function waitForIp(
  transport: ClientTransport,
  reply: ReplyEnvelope,
  payload: unknown,
  onProgress: (progress: ProgressEnvelope) => void,
): Promise<ReplyEnvelope> {
  const result = reply.result as { id?: unknown; vm?: unknown } | undefined;
  const vm = typeof result?.id === 'string' ? result.id : typeof result?.vm === 'string' ? result.vm : (payload as { vm?: unknown })?.vm;
  if (typeof vm !== 'string') throw cloudletError('USAGE', '--wait-ip needs a command whose result or payload names a VM (create-vm, start-vm, restart-vm, get-vm)');
  const ipReply = await transport.request(makeRequest({ type: 'get-vm-ip', target: reply.host, payload: { vm, wait: true, timeoutMs: 120_000 } }), { onProgress });
  if (!ipReply.ok) return ipReply;
  return { ...reply, result: { ...(reply.result as object), addresses: (ipReply.result as { addresses: unknown }).addresses } };
}

async function printGathered(gathered: GatherResult, output: CommandContext['output']): Promise<number> {
  const failed = gathered.replies.filter((r) => !r.ok);
  const human = [
    ...gathered.replies.map((r) =>
      r.ok ? `${r.host}: ${JSON.stringify(r.result, null, 2)}` : `${r.host}: error [${r.error?.code}] ${r.error?.message}`,
    ),
    ...gathered.missing.map((host) => `${host}: no answer before the deadline`),
  ].join('\n');
  output.result(human || '(no host takes broadcasts)', { replies: gathered.replies, missing: gathered.missing });
  return failed.length > 0 || gathered.missing.length > 0 ? EXIT.ERROR_REPLY : EXIT.OK;
}

async function readPayload(inline: string | undefined, file: string | undefined): Promise<unknown> {
  if (inline !== undefined && file !== undefined) throw cloudletError('USAGE', 'give either --payload or --payload-file, not both');
  let text = inline;
  let source = '--payload';
  if (file !== undefined) {
    source = `--payload-file ${file}`;
    text = await readFile(file, 'utf8').catch((error: Error) => {
      throw cloudletError('USAGE', `cannot read ${file}: ${error.message}`);
    });
  }
  if (text === undefined) return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw cloudletError('USAGE', `${source} is not valid JSON: ${(error as Error).message}`);
  }
}

export { defaultSocketPath };
