/**
 * What `vm create` does about a request that may have run before: the request id it sends (--request-id,
 * or one drawn here, so that a failure can name it), the hint after a failure that leaves the outcome
 * unknown, and the checks on an answer that is a repeat. qemu-backend answers a repeated id with the VM it
 * made (docs/QEMU.md section 11.1); on RabbitMQ an older agent that requires signatures sends its stored reply.
 */
import { messageIdSchema, type ReplyEnvelope } from '../../envelope.ts';
import { CloudletError, cloudletError } from '../../errors.ts';
import { ErrorReply } from '../client.ts';
import type { WaitFailure } from './vm-wait.ts';
import type { VmView } from './vm-format.ts';

/** `--request-id`, checked as the envelope checks an id (a USAGE error, not BAD_ENVELOPE); else a random id. */
export function requestIdFor(raw: string | undefined): string {
  if (raw === undefined) return crypto.randomUUID();
  if (messageIdSchema.safeParse(raw).success) return raw;
  throw cloudletError('USAGE', `--request-id must be 1–128 printable ASCII characters without spaces, found ${JSON.stringify(raw)}`);
}

/** Client-side failures after which the create may have run (or may still run) on a host. */
const OUTCOME_UNKNOWN = new Set(['CLIENT_TIMEOUT', 'CONNECTION_LOST', 'HOST_DOWN']);

/**
 * After a failure that leaves the outcome unknown, the way to learn it without making a second VM: the same
 * create again with the same request id, on the same host. The id goes into the details too, for scripts.
 * `host`: the host that took the request, when known; `routed`: RabbitMQ, where another host may take a repeat.
 */
export function withRepeatHint(error: unknown, requestId: string, host: string | undefined, routed: boolean): unknown {
  if (!(error instanceof CloudletError) || !OUTCOME_UNKNOWN.has(error.code)) return error;
  // HOST_DOWN naming a `target` is the client's refusal before sending: nothing can have run.
  if (error.code === 'HOST_DOWN' && (error.details as { target?: unknown } | undefined)?.target !== undefined) return error;
  const where = host !== undefined ? ` --host ${host}` : '';
  // Without --host, the CLI asks every host where the request ran first (vm-create-find.ts).
  const which = routed && host === undefined ? ' (every host is asked where it ran)' : '';
  const hint = `the create may have run${host ? ` on ${host}` : ''}: run the same "cloudlet vm create" again with --request-id=${shellWord(requestId)}${where}${which}; it answers with the VM that request made (once the host is up and the create done) instead of making a second one`;
  const details = typeof error.details === 'object' && error.details !== null ? error.details : {};
  return new CloudletError(error.code, error.message, { details: { ...details, request: requestId, hint }, cause: error.cause, retryable: error.retryable });
}

/**
 * The id as a shell word, to be pasted: as it is when it holds only characters no shell treats specially,
 * else in single quotes (a quote inside closed, escaped and reopened). With `--request-id=` in front, an id
 * that looks like an option (`--host`) is still taken as the flag's value.
 */
export function shellWord(text: string): string {
  return /^[A-Za-z0-9._:/@%+,-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

/** The settings `vm create` asks for, as the payload carries them. */
export interface AskedSettings {
  image: string;
  memory: number;
  vcpus: number;
  name?: string;
  autostart?: boolean;
  network?: string;
}

/**
 * The answer's VM against what was asked: a fresh create always matches, so a mismatch means the request id
 * made another VM before. qemu-backend refuses that itself (REQUEST_ID_REUSED), but an older RabbitMQ agent
 * that requires signatures sends its stored reply without looking at the payload: this catches it there.
 */
export function checkSameSettings(reply: ReplyEnvelope, vm: VmView, asked: AskedSettings, requestId: string): void {
  const compared: [string, unknown, unknown][] = [
    ['image', asked.image, vm.image],
    ['memory', asked.memory, vm.memoryMiB],
    ['vcpus', asked.vcpus, vm.vcpus],
    ['name', asked.name ?? null, vm.name],
    ['autostart', asked.autostart ?? false, vm.autostart],
    ['network', asked.network ?? vm.network, vm.network],
  ];
  const differs = compared.filter(([, now, then]) => now !== then);
  if (differs.length === 0) return;
  const said = differs.map(([field, now, then]) => `${field} ${shown(now)} (made with ${shown(then)})`).join(', ');
  throw new ErrorReply({
    ...reply,
    ok: false,
    result: undefined,
    error: {
      code: 'REQUEST_ID_REUSED',
      message: `request ${requestId} made VM ${vm.id} already, with other settings: ${said}; give a new request a new id`,
      retryable: false,
      details: { vm: vm.id, request: requestId, fields: differs.map(([field]) => field) },
    },
  });
}

/**
 * A repeat answered with a VM that is not running now: stopped since (its owner's last word was "stopped"),
 * or its QEMU ended or is paused. Nothing will start it, so --wait or --wait-ip would wait out their time:
 * the wait fails at once instead, saying how to start it.
 */
export function stoppedSince(vm: VmView): WaitFailure | undefined {
  if (!vm.already || vm.state === 'running') return undefined;
  const why = vm.desired === 'stopped' ? 'has been stopped since' : `is ${vm.state} now, though nobody stopped it`;
  const error = cloudletError('VM_STOPPED', `${vm.id} was made by this request before and ${why}; nothing waits for it to run`, {
    vm: vm.id,
    state: vm.state,
    hint: `start it: "cloudlet vm start ${vm.id} --wait"`,
  });
  return { for: 'state', error };
}

/** A setting as the message shows it: an absent name reads (none), not null. */
const shown = (value: unknown): string => (value === null ? '(none)' : JSON.stringify(value));
