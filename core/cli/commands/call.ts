import { MESSAGE_BYTES_CEILING } from '../../config/schema.ts';
import { CloudletError, cloudletError, type WireError } from '../../errors.ts';
import { messageTypeSchema, type ProgressEnvelope, type ReplyEnvelope } from '../../envelope.ts';
import { readTextUpTo } from '../../read-up-to.ts';
import { chooseRoute } from '../../routing.ts';
import type { GatherResult } from '../../transports/transport.ts';
import { CLIENT_FLAGS, timeoutFlag } from '../args.ts';
import { ErrorReply, openClient, targetFor, untrustedField, whyMissing, type CliClient } from '../client.ts';
import type { Command, CommandContext } from '../command.ts';
import { EXIT, exitCodeForReply } from '../exit-codes.ts';

const usage = `cloudlet call TYPE [--payload JSON | --payload-file FILE] [--host HOST] [--timeout MS]
             [--wait-ip] [--config FILE] [--socket PATH] [--json]
  Sends one message of TYPE and prints the reply's result; progress goes to stderr. On RabbitMQ, --host sends
  it to that host; without it, broadcast types (routing.broadcast) go to every live host and print each
  host's answer, any-host types (routing.any) go to one host with capacity. --timeout MS is the deadline
  (default: wait while the host shows signs of life, up to 30 s of silence). With --json, prints the whole
  reply envelope (or {replies, missing}). --wait-ip: after a VM command succeeded (a payload naming the VM,
  or create-vm), wait for the VM's address (get-vm-ip on its host) and add it to the result; if the wait
  fails, the result is printed all the same, then the error (--json: the reply plus "waitIp").
  Exit 0 on success, 1 when a host answered with an error, 5 when time ran out (no reply by --timeout, the
  host's DEADLINE_EXCEEDED, or a --wait-ip that found no address in time).`;

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
    if (values['wait-ip']) checkNamesVm(type, payload);
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
      if (route === 'broadcast') {
        if (values['wait-ip']) throw cloudletError('USAGE', `--wait-ip waits for one VM's address, but "${type}" is broadcast to every host (routing.broadcast)`);
        return printGathered(await client.gather(type, payload, { deadline, onProgress }), output);
      }
      const reply = await client.request(type, payload, { target, deadline, onProgress });
      if (reply.ok && values['wait-ip']) return printWaited(await waitForIp(client, reply, payload, deadline, onProgress), output);
      if (reply.ok) {
        output.result(reply.result === undefined ? '(no result)' : JSON.stringify(reply.result, null, 2), reply);
        return EXIT.OK;
      }
      if (output.json) {
        output.result('', reply);
        return exitCodeForReply(reply.error ?? { code: 'INTERNAL' });
      }
      throw new ErrorReply(reply);
    } finally {
      await client.close();
    }
  },
};

/** How long --wait-ip waits for an address without --timeout. */
const WAIT_IP_DEFAULT_MS = 120_000;

/** The type whose result names the VM it made; other commands about a VM name it in the payload. */
const CREATES_VM = 'create-vm';

const vmInPayload = (payload: unknown): string | undefined => {
  const vm = (payload as { vm?: unknown } | null)?.vm;
  return typeof vm === 'string' ? vm : undefined;
};

/** `--wait-ip` is refused before anything is sent when neither the payload nor the type can name a VM. */
function checkNamesVm(type: string, payload: unknown): void {
  if (type === CREATES_VM || vmInPayload(payload) !== undefined) return;
  throw cloudletError('USAGE', `--wait-ip needs a payload naming the VM ({"vm": ID}, as for start-vm, restart-vm, get-vm) or ${CREATES_VM}, whose result names the new VM; this "${type}" payload names none`);
}

/** The command's reply (with `addresses` added when the wait succeeded), and why the wait failed if it did. */
interface Waited {
  reply: ReplyEnvelope;
  waitIp?: { ok: false; host?: string; error: WireError };
}

/**
 * `--wait-ip`: after a command about a VM (create-vm, start-vm, …) succeeded, ask the VM's host for its
 * address, waiting until one is known, and add `addresses` to the result. A failed wait never hides the
 * command's own reply: a create-vm that succeeded made a VM, and its id must reach the caller.
 */
async function waitForIp(
  client: CliClient,
  reply: ReplyEnvelope,
  payload: unknown,
  deadline: number | undefined,
  onProgress: (progress: ProgressEnvelope) => void,
): Promise<Waited> {
  const result = reply.result as { id?: unknown; vm?: unknown } | undefined;
  const vm = typeof result?.id === 'string' ? result.id : typeof result?.vm === 'string' ? result.vm : vmInPayload(payload);
  if (vm === undefined) {
    // checkNamesVm let it through, so the host's result lacks what it should have: not a usage error.
    const error = cloudletError('INVALID_RESULT', `${reply.type}'s result from ${reply.host} names no VM (no string "id" or "vm"), so --wait-ip had no address to wait for`);
    return { reply, waitIp: { ok: false, error: error.toWire() } };
  }
  // Within --timeout when there is one (what the first command left of it, less a margin so the host says
  // IP_NOT_FOUND rather than run into the deadline), else up to two minutes.
  const left = deadline === undefined ? undefined : Math.max(0, deadline - Date.now());
  const timeoutMs = left === undefined ? WAIT_IP_DEFAULT_MS : Math.round(left - Math.min(1_000, left / 4));
  const ipReply = await client.request('get-vm-ip', { vm, wait: true, timeoutMs }, { target: reply.host, onProgress, deadline });
  if (!ipReply.ok) {
    const error = ipReply.error ?? { code: 'INTERNAL', message: 'error reply without an error', retryable: false };
    return { reply, waitIp: { ok: false, host: ipReply.host, error } };
  }
  return { reply: { ...reply, result: { ...(reply.result as object), addresses: (ipReply.result as { addresses: unknown }).addresses } } };
}

/** The command's result always; a failed wait after it as an error (stderr, or `waitIp` in the JSON): exit 5 when it ran out of time, else 1. */
function printWaited({ reply, waitIp }: Waited, output: CommandContext['output']): number {
  output.result(reply.result === undefined ? '(no result)' : JSON.stringify(reply.result, null, 2), waitIp ? { ...reply, waitIp } : reply);
  if (!waitIp) return EXIT.OK;
  if (!output.json) output.error(CloudletError.fromWire(waitIp.error), waitIp.host);
  return exitCodeForReply(waitIp.error);
}

function printGathered(gathered: GatherResult, output: CommandContext['output']): number {
  const failed = gathered.replies.filter((r) => !r.ok);
  const human = [
    ...gathered.replies.map((r) =>
      r.ok ? `${r.host}: ${JSON.stringify(r.result, null, 2)}` : `${r.host}: error [${r.error?.code}] ${r.error?.message}`,
    ),
    ...gathered.missing.map((host) => `${host}: ${gathered.untrusted?.some((u) => u.host === host) ? whyMissing(gathered, host) : 'no answer before the deadline'}`),
  ].join('\n');
  output.result(human || '(no host takes broadcasts)', { replies: gathered.replies, missing: gathered.missing, ...untrustedField(gathered) });
  return failed.length > 0 || gathered.missing.length > 0 ? EXIT.ERROR_REPLY : EXIT.OK;
}

async function readPayload(inline: string | undefined, file: string | undefined): Promise<unknown> {
  if (inline !== undefined && file !== undefined) throw cloudletError('USAGE', 'give either --payload or --payload-file, not both');
  let text = inline;
  let source = '--payload';
  if (file !== undefined) {
    source = `--payload-file ${file}`;
    text = await readPayloadFile(file);
  }
  if (text === undefined) return {};
  let payload: unknown;
  try {
    payload = JSON.parse(text) as unknown;
  } catch (error) {
    throw cloudletError('USAGE', `${source} is not valid JSON: ${(error as Error).message}`);
  }
  // JSON.parse reads any depth, but sending writes the payload with JSON.stringify, which recurses: a few
  // thousand levels overflow the stack. Found here, before anything is sent, as the file's fault.
  try {
    JSON.stringify(payload);
  } catch (error) {
    throw cloudletError('USAGE', `${source} nests too deeply to be sent as JSON (${(error as Error).message}); flatten it`);
  }
  return payload;
}

/**
 * The file's text, read up to the largest message any config allows: a file past that could never be sent,
 * and one such as /dev/zero never ends (read whole, it filled memory and failed with "Invalid string length").
 */
async function readPayloadFile(file: string): Promise<string> {
  const read = await readTextUpTo(file, MESSAGE_BYTES_CEILING).catch((error: Error) => {
    throw cloudletError('USAGE', `cannot read ${file}: ${error.message}`);
  });
  if ('tooLarge' in read) {
    throw cloudletError('USAGE', `--payload-file ${file} is larger than ${MESSAGE_BYTES_CEILING / 1024 / 1024} MiB, more than any message may be (limits.maxMessageBytes is at most that)`);
  }
  return read.text;
}
