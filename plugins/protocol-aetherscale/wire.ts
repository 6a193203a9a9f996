/**
 * The aetherscale wire format: what its clients publish and the reply bodies they expect. Texts of error
 * reasons follow the original where it had one ("VM ID not specified"), so scripts matching them keep working.
 */

/** create-vm waits on the shared queue for one host; the others reach every host. */
export const COMPETING_COMMANDS = ['create-vm'] as const;
export const PER_HOST_COMMANDS = ['list-vms', 'start-vm', 'stop-vm', 'delete-vm'] as const;
export type Command = (typeof COMPETING_COMMANDS)[number] | (typeof PER_HOST_COMMANDS)[number];
export type Route = 'competing' | 'per-host';

const ALL_COMMANDS: readonly string[] = [...COMPETING_COMMANDS, ...PER_HOST_COMMANDS];

/** Bodies larger than this are refused before parsing (aetherscale requests are a few hundred bytes). */
export const MAX_REQUEST_BYTES = 1024 * 1024;

export type AetherscaleReply =
  | { 'execution-info': { status: 'success' }; response: unknown }
  | { 'execution-info': { status: 'error'; reason: string } };

export function success(response: unknown): AetherscaleReply {
  return { 'execution-info': { status: 'success' }, response };
}

export function failure(reason: string): AetherscaleReply {
  return { 'execution-info': { status: 'error', reason } };
}

/**
 * A value from a request, for an error reason: a string quoted and cut to 100 characters, anything else by
 * its type. Never the whole value: a deeply nested one overflows the stack of JSON.stringify, and a large
 * one would be sent back whole.
 */
export function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 100 ? `${value.slice(0, 100)}…` : value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return String(value);
}

export type ParsedRequest =
  | { ok: true; command: Command; options: Record<string, unknown> }
  | { ok: false; reason: string };

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function routeOf(command: Command): Route {
  return (COMPETING_COMMANDS as readonly string[]).includes(command) ? 'competing' : 'per-host';
}

/**
 * `{"command": …, "options": {…}}`. A command that arrived on the wrong queue (published with a routing key
 * other than its name) is refused: run as it came, a create-vm sent to every host would create a VM on each.
 */
export function parseRequest(body: Uint8Array, route: Route): ParsedRequest {
  if (body.byteLength > MAX_REQUEST_BYTES) return { ok: false, reason: `Message too large: ${body.byteLength} bytes (at most ${MAX_REQUEST_BYTES})` };
  let data: unknown;
  try {
    data = JSON.parse(utf8.decode(body));
  } catch (error) {
    return { ok: false, reason: `Message is not valid JSON: ${(error as Error).message}` };
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    return { ok: false, reason: 'Message must be a JSON object: {"command": "<name>", "options": {...}}' };
  }
  const { command, options } = data as { command?: unknown; options?: unknown };
  if (command === undefined || command === null) return { ok: false, reason: 'No "command" specified in message' };
  if (typeof command !== 'string' || !ALL_COMMANDS.includes(command)) {
    const named = typeof command === 'object' && command !== null ? `(${shown(command)})` : shown(command);
    return { ok: false, reason: `Invalid command ${named} specified (known: ${ALL_COMMANDS.join(', ')})` };
  }
  if (routeOf(command as Command) !== route) {
    return { ok: false, reason: `Command "${command}" must be published with routing key "${command}"` };
  }
  if (options !== undefined && options !== null && (typeof options !== 'object' || Array.isArray(options))) {
    return { ok: false, reason: '"options" must be a JSON object' };
  }
  return { ok: true, command: command as Command, options: (options ?? {}) as Record<string, unknown> };
}

/** The original read flags with Python's bool(): clients may send 1, "yes" or [] and mean what Python meant. */
export function pythonTruthy(value: unknown): boolean {
  if (value === undefined || value === null || value === false || value === 0 || value === '') return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === 'object') return Object.keys(value).length > 0;
  return true;
}
