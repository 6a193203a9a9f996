/** How the CLI prints: plain text for people, one JSON document for scripts (`--json`). */
import process from 'node:process';
import type { CloudletError } from '../errors.ts';
import { formatProblem, type ConfigProblem } from '../config/problems.ts';

export interface Output {
  json: boolean;
  /**
   * The result of the command: stdout. The human text is printed terminal-safe (see terminalSafe);
   * `colours` keeps colour sequences and CRLF line ends, for a guest's console log.
   */
  result(human: string, machine: unknown, options?: { colours?: boolean }): void;
  /** Progress and notes: stderr, so stdout stays parseable; nothing with --json. */
  note(text: string): void;
  /** An error, with its code and a hint; `host` when an agent answered with it. */
  error(error: CloudletError, host?: string): void;
}

/** What to do about an error, by code. Errors may also carry their own `details.hint`. */
export const HINTS: Readonly<Record<string, string>> = {
  AGENT_UNREACHABLE: 'start an agent with "cloudlet agent --config FILE" (or "npm start"), or point --config/--socket at the running one; "cloudlet doctor" checks this host',
  UNKNOWN_TYPE: 'run "cloudlet plugins" to see which message types this host handles',
  INVALID_PAYLOAD: 'check the payload against the message type: docs/PROTOCOL.md for the built-in types; "cloudlet plugins" names the plugin that handles any other',
  BUSY: 'the host is saturated for this message type; retry with backoff or raise pools.<type>.maxQueue',
  TIMEOUT: 'raise pools.<type>.timeoutMs if the work legitimately takes longer',
  CLIENT_TIMEOUT: 'raise --timeout, or check the agent log for the message id; a request no host took has expired and will not run, one a host took may have: check "cloudlet vm list" before repeating a create',
  CONFIG_INVALID: 'fix each problem listed, then check the file again without starting anything: "cloudlet config check FILE"',
  BROKER_UNAVAILABLE: 'check transport.url (or CLOUDLET_AMQP_URL) and that RabbitMQ runs; "cloudlet doctor" tries the connection',
  UNKNOWN_HOST: 'run "cloudlet hosts" to see the hosts of this cloud',
  HOST_DOWN: 'the host stopped sending heartbeats; check its agent ("systemctl status cloudlet" there) or run "cloudlet hosts"; a request it was working on may still run if it comes back soon: check "cloudlet vm list" before repeating a create',
  NO_CAPACITY: 'no host asked had room for it: delete VMs, ask for less memory, raise qemu-backend limits, or add a host',
  VM_NOT_FOUND: 'run "cloudlet vm list" to see the VM ids',
  IMAGE_NOT_FOUND: 'run "cloudlet image list" to see the base images each host has',
  IMAGE_INVALID: 'check the images folder (qemu-backend imagesDir); "cloudlet doctor" checks it',
  VM_LIMIT: 'ask for less memory or fewer vCPUs, or raise qemu-backend limits on that host',
  QEMU_FAILED: 'QEMU\'s own words are in the message and the agent log (journalctl -u cloudlet); for a VM that exists, "cloudlet vm console-log VM" shows its console (a failed create leaves none); "cloudlet doctor" checks QEMU',
  NETWORK_FAILED: 'check the bridge and /dev/net/tun with "cloudlet doctor"',
  IP_NOT_FOUND: 'is the guest up and is an ip-discovery plugin configured? "cloudlet vm console-log VM" shows the console',
  UNSIGNED: 'this host requires signed requests: set security.clientKeyFile (see docs/SECURITY.md)',
  FORBIDDEN: "the signing key is not allowed this message type on that host (its security.clients[].allow)",
  WRONG_HOST: 'the VM id names another host; on the local transport only that host’s own VMs can be reached',
};

/**
 * QEMU's own words when KVM fails it: no module or device, a refused init, an assertion in its KVM code
 * (seen: kvm_buf_set_msrs on a nested VM). Not any "kvm" in the text: a host may be called kvm01.
 */
const KVM_FAILURE = /Could not access KVM kernel module|failed to initialize kvm|\bkvm_[a-z_]+: Assertion|\bKVM_[A-Z_]+\)? failed/i;

/** A VM that is not running has no address to find: the generic IP_NOT_FOUND hint would mislead. */
function hintFor(error: { code: string; message?: string; details?: unknown }): string | undefined {
  const details = error.details as { state?: unknown; vm?: unknown; noDiscovery?: unknown; owner?: unknown } | undefined;
  if (error.code === 'IP_NOT_FOUND' && details?.noDiscovery === true) return 'add ip-discovery-dnsmasq, ip-discovery-arp or ip-discovery-guest-agent to that host\'s plugins (docs/QEMU.md section 14)';
  if (error.code === 'QEMU_FAILED' && KVM_FAILURE.test(error.message ?? '')) {
    return 'QEMU could not use KVM on that host: set "accel: tcg" in its qemu-backend options (slower, no KVM needed; docs/QEMU.md section 7) or fix /dev/kvm';
  }
  if (error.code === 'VM_NOT_FOUND' && typeof details?.owner === 'string') {
    return `the VM id names host "${details.owner}": over RabbitMQ, leave out --host and the command goes there; an agent's local socket reaches only its own host's VMs`;
  }
  if (error.code === 'IP_NOT_FOUND' && details?.state === 'stopped') return `start it first: "cloudlet vm start ${typeof details.vm === 'string' ? details.vm : 'VM'}"`;
  return HINTS[error.code];
}

export function createOutput(json: boolean, streams: { stdout?: NodeJS.WritableStream; stderr?: NodeJS.WritableStream } = {}): Output {
  const stdout = streams.stdout ?? process.stdout;
  const stderr = streams.stderr ?? process.stderr;
  return {
    json,
    result(human, machine, options = {}) {
      const text = terminalSafe(human, options);
      stdout.write(json ? `${JSON.stringify(machine, null, 2)}\n` : text.endsWith('\n') ? text : `${text}\n`);
    },
    note(text) {
      if (!json) stderr.write(`${terminalSafe(text)}\n`);
    },
    error(error, host) {
      if (json) {
        stdout.write(`${JSON.stringify({ ok: false, ...(host ? { host } : {}), error: error.toWire() }, null, 2)}\n`);
        return;
      }
      const body = errorBody(error);
      const ownHint = (error.details as { hint?: unknown } | undefined)?.hint;
      const hint = typeof ownHint === 'string' ? ownHint : hintFor(error);
      stderr.write(terminalSafe(`error [${error.code}]${host ? ` from ${host}` : ''}: ${body}\n${hint ? `hint: ${hint}\n` : ''}`));
    },
  };
}

// C0 controls but tab and newline, DEL, C1 controls, and the bidirectional embeddings, overrides and isolates.
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
// eslint-disable-next-line no-control-regex
const COLOUR_OR_UNSAFE = /(\u001b\[[0-9;]{0,32}m|\r\n)|[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

/**
 * Text for a terminal: what the CLI prints comes in part from hosts, plugins and guests, and printed raw an
 * escape sequence can retitle the window, write the clipboard (OSC 52) or hide text (a carriage return, a
 * bidi override). Such characters are shown escaped (`\x1b`, `\r`, `\u202e`); newlines and tabs stay.
 * `colours` also keeps SGR colour sequences and CRLF line ends, as `less -R` does, for a console log.
 */
export function terminalSafe(text: string, options: { colours?: boolean } = {}): string {
  if (!options.colours) return text.replace(UNSAFE, escapeCharacter);
  return text.replace(COLOUR_OR_UNSAFE, (match: string, kept: string | undefined) => (kept === undefined ? escapeCharacter(match) : kept));
}

function escapeCharacter(character: string): string {
  if (character === '\r') return '\\r';
  const code = character.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * The problems of a config error one by one; the message alone otherwise. The details may come from any host
 * on the wire: problems of another shape are shown as the JSON they are, never formatted as problems.
 */
function errorBody(error: CloudletError): string {
  const details = error.details as { problems?: unknown; thrownCode?: unknown } | undefined;
  // The code a handler threw that its plugin did not declare (ENOENT, another plugin's): what to search for.
  if (error.code === 'HANDLER_ERROR' && typeof details?.thrownCode === 'string') return `${error.message} (thrown code: ${details.thrownCode.slice(0, 64)})`;
  if (details?.problems === undefined) return error.message;
  const { problems } = details;
  if (Array.isArray(problems) && problems.length > 0 && problems.every(isConfigProblem)) {
    return `${problems.length} problem(s):\n${problems.map(formatProblem).join('\n')}`;
  }
  return `${error.message}\ndetails: ${JSON.stringify(details)}`;
}

const OPTIONAL_TEXT = ['found', 'allowed'] as const;

function isConfigProblem(value: unknown): value is ConfigProblem {
  if (typeof value !== 'object' || value === null) return false;
  const fields = value as Record<string, unknown>;
  return (
    ['code', 'file', 'path', 'message'].every((key) => typeof fields[key] === 'string') &&
    OPTIONAL_TEXT.every((key) => fields[key] === undefined || typeof fields[key] === 'string')
  );
}

/** Left-aligned columns; enough for the few tables the CLI prints. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** `key: value` lines with the values aligned, for one resource (`vm show`). */
export function keyValues(pairs: [string, string][]): string {
  const width = Math.max(...pairs.map(([key]) => key.length));
  return pairs.map(([key, value]) => `${`${key}:`.padEnd(width + 1)} ${value}`).join('\n');
}

/** Seconds with one decimal: "12.3 s". */
export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
