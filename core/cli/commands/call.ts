import { readFile } from 'node:fs/promises';
import { cloudletError } from '../../errors.ts';
import { messageTypeSchema, type ProgressEnvelope, type ReplyEnvelope } from '../../envelope.ts';
import { chooseRoute } from '../../routing.ts';
import type { GatherResult } from '../../transports/transport.ts';
import { CLIENT_FLAGS, timeoutFlag } from '../args.ts';
import { ErrorReply, openClient, targetFor, type CliClient } from '../client.ts';
import type { Command, CommandContext } from '../command.ts';
import { EXIT } from '../exit-codes.ts';

const usage = `cloudlet call TYPE [--payload JSON | --payload-file FILE] [--host HOST] [--timeout MS]
             [--wait-ip] [--config FILE] [--socket PATH] [--json]
  Sends one message of TYPE and prints the reply's result; progress goes to stderr. On RabbitMQ, --host sends
  it to that host; without it, broadcast types (routing.broadcast) go to every live host and print each
  host's answer, any-host types (routing.any) go to one host with capacity. --timeout MS is the deadline
  (default: wait while the host shows signs of life, up to 30 s of silence). With --json, prints the whole
  reply envelope (or {replies, missing}). --wait-ip: after a VM command succeeded, wait for the VM's address
  (get-vm-ip on its host) and add it to the result. Exit 0 on success, 1 when a host answered with an error.`;

export const callCommand: Command = {
  words: ['call'],
  usage,
  flags: [...CLIENT_FLAGS, 'payload', 'payload-file', 'wait-ip'],
  async run({ positionals, values, output }) {
    const [type, ...extra] = positionals;
    if (!type || extra.length > 0) throw cloudletError('USAGE', `expected exactly one message TYPE\n${usage}`);
    if (!messageTypeSchema.safeParse(type).success) {
      throw cloudletError('USAGE', `"${type}" is not a message type name: lowercase words joined by "-" or ".", e.g. host-info`);
    }
    const payload = await readPayload(values.payload, values['payload-file']);
    const timeoutMs = timeoutFlag(values);
    const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
    try {
      // A VM's id names its host: commands about a VM go straight to the owner without --host.
      const target = targetFor(client, values.host, payload);
      const route = chooseRoute(client.config, type, target);
      const onProgress = (progress: ProgressEnvelope) =>
        output.note(`… ${progress.host}: ${progress.stage}${progress.detail ? ` ${JSON.stringify(progress.detail)}` : ''}`);
      // With --timeout the agent gets a hard deadline; without it, waiting lasts as long as the host shows signs of life.
      const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
      if (route === 'broadcast') return printGathered(await client.gather(type, payload, { deadline, onProgress }), output);
      let reply = await client.request(type, payload, { target, deadline, onProgress });
      if (reply.ok && values['wait-ip']) reply = await waitForIp(client, reply, payload, deadline, onProgress);
      if (reply.ok) {
        output.result(reply.result === undefined ? '(no result)' : JSON.stringify(reply.result, null, 2), reply);
        return EXIT.OK;
      }
      if (output.json) {
        output.result('', reply);
        return EXIT.ERROR_REPLY;
      }
      throw new ErrorReply(reply);
    } finally {
      await client.close();
    }
  },
};

/** How long --wait-ip waits for an address without --timeout. */
const WAIT_IP_DEFAULT_MS = 120_000;

/**
 * `--wait-ip`: after a command about a VM (create-vm, start-vm, …) succeeded, ask the VM's host for its
 * address, waiting until one is known, and add `addresses` to the result.
 */
async function waitForIp(
  client: CliClient,
  reply: ReplyEnvelope,
  payload: unknown,
  deadline: number | undefined,
  onProgress: (progress: ProgressEnvelope) => void,
): Promise<ReplyEnvelope> {
  const result = reply.result as { id?: unknown; vm?: unknown } | undefined;
  const vm = typeof result?.id === 'string' ? result.id : typeof result?.vm === 'string' ? result.vm : (payload as { vm?: unknown })?.vm;
  if (typeof vm !== 'string') throw cloudletError('USAGE', '--wait-ip needs a command whose result or payload names a VM (create-vm, start-vm, restart-vm, get-vm)');
  // Within --timeout when there is one (what the first command left of it, less a margin so the host says
  // IP_NOT_FOUND rather than run into the deadline), else up to two minutes.
  const left = deadline === undefined ? undefined : Math.max(0, deadline - Date.now());
  const timeoutMs = left === undefined ? WAIT_IP_DEFAULT_MS : Math.round(left - Math.min(1_000, left / 4));
  const ipReply = await client.request('get-vm-ip', { vm, wait: true, timeoutMs }, { target: reply.host, onProgress, deadline });
  if (!ipReply.ok) return ipReply;
  return { ...reply, result: { ...(reply.result as object), addresses: (ipReply.result as { addresses: unknown }).addresses } };
}

function printGathered(gathered: GatherResult, output: CommandContext['output']): number {
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
