/**
 * The one pino root logger. Everything else logs through `child({ plugin })` or `child({ msgId, type })`.
 * Secrets are redacted by configuration: known secret keys anywhere in the first levels of a record, and
 * passwords inside URLs (amqp://user:secret@host) in any string value.
 */
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import { redactUrlCredentials } from './redact.ts';

export { redactUrlCredentials };

export type { Logger };

const SECRET_KEYS = ['password', 'passwd', 'secret', 'token', 'apiKey', 'privateKey', 'key', 'authorization', 'cookie'];

/** pino's redaction works on paths; cover the key at the top level and a few levels down. */
const REDACT_PATHS = SECRET_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`, `*.*.*.${key}`]);

function scrub(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return redactUrlCredentials(value);
  if (depth > 4 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((item) => scrub(item, depth + 1));
  if (value instanceof Error) return value;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[key] = scrub(item, depth + 1);
  return out;
}

/**
 * An error for the log: its cause as its own object (code, details, stack), not appended to its message,
 * which in this codebase already says what the cause said. Serializers run after `formatters.log`, so the
 * URL scrub is applied here too: a URL's password in an error's (or its cause's) message or stack.
 */
function serializeError(error: unknown): unknown {
  return scrub(pino.stdSerializers.errWithCause(error as Error), 0);
}

export interface LoggerOptions {
  level: string;
  format: 'auto' | 'json' | 'pretty';
  /** Defaults to stdout; tests pass a stream to read what was logged. */
  destination?: NodeJS.WritableStream;
  base?: Record<string, unknown>;
}

export function createLogger(options: LoggerOptions): Logger {
  const destination = options.destination ?? process.stdout;
  const usePretty = options.format === 'pretty' || (options.format === 'auto' && (destination as { isTTY?: boolean }).isTTY === true);
  const stream = usePretty ? pretty({ destination: destination as Writable, colorize: (destination as { isTTY?: boolean }).isTTY === true, sync: true }) : destination;
  return pino(
    {
      level: options.level,
      base: options.base ?? {},
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { log: (record) => scrub(record, 0) as Record<string, unknown> },
      hooks: {
        // Message strings bypass `formatters.log`, so URLs in them are scrubbed here.
        logMethod(args, method) {
          method.apply(this, args.map((arg) => (typeof arg === 'string' ? redactUrlCredentials(arg) : arg)) as Parameters<typeof method>);
        },
      },
      serializers: { err: serializeError, error: serializeError },
      messageKey: 'msg',
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    stream as pino.DestinationStream,
  );
}

/** A logger that discards everything (CLI commands that only print results). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/** Collects JSON log lines in memory; for tests. */
export function memoryDestination(): { stream: Writable; lines: () => Record<string, unknown>[]; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      chunks.push(String(chunk));
      callback();
    },
  });
  return {
    stream,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line) => JSON.parse(line) as Record<string, unknown>),
    text: () => chunks.join(''),
  };
}

type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';

/**
 * `parent.child(bindings)`, made only when something is logged at an enabled level. The dispatcher gives every
 * message its own child logger; pino builds a child's bindings (through redaction) at once, which cost ~5% of
 * the agent's CPU per request while an agent at `warn` usually logs nothing for a message (bench F4).
 */
export function lazyChild(parent: Logger, bindings: Record<string, unknown>): Pick<Logger, Level> {
  let child: Logger | undefined;
  const at =
    (level: Level) =>
    (obj: object | string, msg?: string): void => {
      if (!parent.isLevelEnabled(level)) return;
      child ??= parent.child(bindings);
      if (msg === undefined) child[level](obj as object);
      else child[level](obj as object, msg);
    };
  return { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } as Pick<Logger, Level>;
}
