import { readFile } from 'node:fs/promises';
import { CloudletError, cloudletError } from '../../errors.ts';
import { hostIdSchema, makeRequest, messageTypeSchema } from '../../envelope.ts';
import { createClientTransport } from '../../transports/index.ts';
import { defaultSocketPath } from '../../transports/local.ts';
import { clientConfig } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';
import type { CommandContext } from '../main.ts';

export const callUsage = `cloudlet call TYPE [--payload JSON | --payload-file FILE] [--host HOST] [--timeout MS]
             [--config FILE] [--socket PATH] [--json]
  Sends one message of TYPE and prints the reply's result. Progress goes to stderr. With --json, prints the
  whole reply envelope. Exit 0 on success, 1 when the agent answered with an error.`;

export async function callCommand({ positionals, values, output }: CommandContext): Promise<number> {
  const [type, ...extra] = positionals;
  if (!type || extra.length > 0) throw cloudletError('USAGE', `expected exactly one message TYPE\n${callUsage}`);
  if (!messageTypeSchema.safeParse(type).success) {
    throw cloudletError('USAGE', `"${type}" is not a message type name: lowercase words joined by "-" or ".", e.g. host-info`);
  }
  const payload = await readPayload(values.payload, values['payload-file']);
  const timeoutMs = values.timeout === undefined ? 30_000 : Number(values.timeout);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 86_400_000) {
    throw cloudletError('USAGE', `--timeout must be a whole number of milliseconds between 1 and 86400000, found "${values.timeout}"`);
  }
  if (values.host !== undefined && !hostIdSchema.safeParse(values.host).success) {
    throw cloudletError('USAGE', `--host "${values.host}" is not a host id: lowercase letters, digits and "-", 1–63 characters`);
  }

  const config = await clientConfig(values.config);
  if (values.socket && config.transport.kind === 'local') config.transport.socket = values.socket;
  const transport = createClientTransport(config);
  try {
    const request = makeRequest({ type, payload, deadline: Date.now() + timeoutMs, target: values.host });
    const reply = await transport.request(request, {
      onProgress: (progress) => output.note(`… ${progress.stage}${progress.detail ? ` ${JSON.stringify(progress.detail)}` : ''}`),
    });
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
