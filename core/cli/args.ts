/**
 * Every flag of every `cloudlet` command, declared once. Commands list the flags they accept; the parser
 * knows them all, so a flag another command owns is refused by name instead of as "unknown".
 */
import { cloudletError } from '../errors.ts';
import { hostIdSchema } from '../envelope.ts';

export const FLAGS = {
  config: { type: 'string', short: 'c' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
  // reaching agents
  socket: { type: 'string' },
  host: { type: 'string' },
  timeout: { type: 'string' },
  // call
  payload: { type: 'string', short: 'p' },
  'payload-file': { type: 'string' },
  // VM commands
  wait: { type: 'boolean' },
  'wait-ip': { type: 'boolean' },
  image: { type: 'string' },
  memory: { type: 'string' },
  vcpus: { type: 'string' },
  name: { type: 'string' },
  autostart: { type: 'boolean' },
  network: { type: 'string' },
  'request-id': { type: 'string' },
  force: { type: 'boolean' },
  hard: { type: 'boolean' },
  lines: { type: 'string' },
  bytes: { type: 'string' },
  // sweep
  'dry-run': { type: 'boolean' },
  // init, install-service, keys
  output: { type: 'string', short: 'o' },
  print: { type: 'boolean' },
  transport: { type: 'string' },
  url: { type: 'string' },
  prefix: { type: 'string' },
  'host-id': { type: 'string' },
  bridge: { type: 'string' },
  'images-dir': { type: 'string' },
  'state-dir': { type: 'string' },
  'ip-discovery': { type: 'string' },
  'lease-file': { type: 'string' },
  'dhcp-range': { type: 'string' },
  out: { type: 'string' },
} as const;

export type FlagName = keyof typeof FLAGS;

export type CliValues = {
  [K in FlagName]?: (typeof FLAGS)[K]['type'] extends 'string' ? string : boolean;
};

/** Flags every command takes. */
export const COMMON_FLAGS: readonly FlagName[] = ['config', 'json', 'help'];

/** Flags of the commands that talk to agents. */
export const CLIENT_FLAGS: readonly FlagName[] = ['socket', 'host', 'timeout'];

/** A whole number within bounds, or a USAGE error naming the flag and what is allowed. */
export function intFlag(values: CliValues, flag: FlagName, bounds: { min: number; max: number }, fallback: number): number;
export function intFlag(values: CliValues, flag: FlagName, bounds: { min: number; max: number }): number | undefined;
export function intFlag(values: CliValues, flag: FlagName, bounds: { min: number; max: number }, fallback?: number): number | undefined {
  const raw = values[flag];
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (typeof raw !== 'string' || !/^\d+$/.test(raw) || value < bounds.min || value > bounds.max) {
    throw cloudletError('USAGE', `--${flag} must be a whole number between ${bounds.min} and ${bounds.max}, found "${String(raw)}"`);
  }
  return value;
}

/** One of a fixed set of words, or a USAGE error listing them. */
export function choiceFlag<T extends string>(values: CliValues, flag: FlagName, choices: readonly T[]): T | undefined {
  const raw = values[flag];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !(choices as readonly string[]).includes(raw)) {
    throw cloudletError('USAGE', `--${flag} must be one of ${choices.join(', ')}, found "${String(raw)}"`);
  }
  return raw as T;
}

/** `--timeout MS`: a deadline for the whole command; undefined means "wait while the host shows signs of life". */
export function timeoutFlag(values: CliValues): number | undefined {
  return intFlag(values, 'timeout', { min: 1, max: 86_400_000 });
}

/** `--host ID`, checked before anything is sent. */
export function checkHostFlag(values: CliValues): void {
  if (values.host !== undefined && !hostIdSchema.safeParse(values.host).success) {
    throw cloudletError('USAGE', `--host "${values.host}" is not a host id: lowercase letters, digits and "-", 1–63 characters`);
  }
}

/**
 * For commands that read the config and take nothing else: a word after them is most likely a config file
 * named the wrong way, and running with another config than the one named would be worse than stopping.
 */
export function refuseConfigPositionals(command: string, positionals: string[]): void {
  if (positionals.length > 0) {
    throw cloudletError('USAGE', `${command} takes no positional arguments, found "${positionals.join(' ')}"; give the config with --config FILE`);
  }
}
