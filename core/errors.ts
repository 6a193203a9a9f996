/**
 * The one error catalogue. Every error that leaves a handler, a worker, the agent or the CLI carries a code
 * from here (or from a plugin's declared `errors`). `docs/ERRORS.md` documents each code; a test keeps the
 * two in sync, so add a row there whenever you add a code here.
 */

export interface ErrorSpec {
  /** Default human text; callers usually pass a more specific message. */
  readonly message: string;
  /** Whether sending the same request again later may succeed. */
  readonly retryable: boolean;
}

export const errorCatalogue = {
  // Envelope and protocol
  BAD_JSON: { message: 'the message is not valid JSON', retryable: false },
  BAD_ENVELOPE: { message: 'the message does not match the envelope schema', retryable: false },
  UNSUPPORTED_VERSION: { message: 'the envelope protocol version is not supported', retryable: false },
  MESSAGE_TOO_LARGE: { message: 'the message is larger than the configured limit', retryable: false },
  UNKNOWN_TYPE: { message: 'no loaded plugin handles this message type', retryable: false },
  INVALID_PAYLOAD: { message: 'the payload does not match the message type schema', retryable: false },
  WRONG_HOST: { message: 'the message names another host as its target', retryable: false },
  DEADLINE_EXCEEDED: { message: 'the deadline passed before the work finished', retryable: true },
  // Execution
  HANDLER_ERROR: { message: 'the handler failed without an error code', retryable: false },
  TIMEOUT: { message: 'the handler ran past its timeout and was cancelled', retryable: true },
  BUSY: { message: 'the queue for this message type is full', retryable: true },
  WORKER_CRASHED: { message: 'the worker running the handler crashed', retryable: true },
  CANCELLED: { message: 'the work was cancelled', retryable: true },
  SHUTTING_DOWN: { message: 'the agent is shutting down and takes no new work', retryable: true },
  INVALID_RESULT: { message: 'the handler returned a value that cannot be sent as JSON', retryable: false },
  INTERNAL: { message: 'an internal error occurred', retryable: false },
  AGENT_ALREADY_RUNNING: { message: 'another agent already listens on the configured address', retryable: false },
  SOCKET_UNSAFE: { message: 'the local socket path is not safe to use', retryable: false },
  FOLDER_IN_USE: { message: 'another agent on this machine uses a folder this agent would use', retryable: false },
  // Routing between hosts (RabbitMQ transport)
  BROKER_UNAVAILABLE: { message: 'the message broker cannot be reached', retryable: true },
  UNKNOWN_HOST: { message: 'no host with this id takes direct requests on this cloud', retryable: false },
  HOST_DOWN: { message: 'the target host is not running (no heartbeat, no consumer)', retryable: true },
  HOST_UP: { message: 'the host is up, so it cannot be forgotten', retryable: false },
  NO_CAPACITY: { message: 'no live host has capacity for the request', retryable: true },
  DEAD_LETTERED: { message: 'the request failed too many times and was moved to the dead-letter queue', retryable: false },
  STATE_UNWRITABLE: { message: 'the host could not record the request in its state directory, so it did not run it', retryable: true },
  // Authentication (security.requireSignatures)
  UNSIGNED: { message: 'the request carries no signature and this host requires one', retryable: false },
  BAD_SIGNATURE: { message: 'the signature does not match the request or its key is unknown', retryable: false },
  FORBIDDEN: { message: 'the signing key may not send this message type to this host', retryable: false },
  REPLAYED: { message: 'a request with this id was already taken, or its deadline is too far ahead or missing', retryable: false },
  UNTRUSTED_REPLY: { message: 'the reply is not signed by a key trusted for its host', retryable: false },
  // Client side
  AGENT_UNREACHABLE: { message: 'the agent could not be reached', retryable: true },
  CONNECTION_LOST: { message: 'the connection closed before a reply arrived', retryable: true },
  CLIENT_TIMEOUT: { message: 'no reply arrived before the deadline', retryable: true },
  DUPLICATE_ID: { message: 'a request with this id is still waiting for its reply on this client', retryable: true },
  USAGE: { message: 'the command line is not valid', retryable: false },
  VM_STOPPED: { message: 'vm create --wait: the VM a repeated request made is not running now', retryable: false },
  REQUEST_UNRESOLVED: { message: 'vm create --request-id: a host that may have run the request could not say whether it did', retryable: true },
  // Config
  CONFIG_NOT_FOUND: { message: 'the config file does not exist or cannot be read', retryable: false },
  CONFIG_SYNTAX: { message: 'the config file is not valid YAML or JSON', retryable: false },
  CONFIG_INVALID: { message: 'the config does not match its schema', retryable: false },
  CONFIG_INSECURE: { message: 'a file holding secrets can be read by other users', retryable: false },
  // Plugin loading (all checked before any plugin hook runs)
  PLUGIN_NOT_FOUND: { message: 'the plugin module could not be found', retryable: false },
  PLUGIN_IMPORT_FAILED: { message: 'the plugin module threw while being imported', retryable: false },
  PLUGIN_INVALID: { message: 'the module does not export a valid plugin definition', retryable: false },
  PLUGIN_API_MISMATCH: { message: 'the plugin does not support this core API version', retryable: false },
  PLUGIN_DUPLICATE: { message: 'two configured plugins have the same name', retryable: false },
  PLUGIN_DEPENDENCY_MISSING: { message: 'a plugin depends on a plugin that is not configured', retryable: false },
  PLUGIN_DEPENDENCY_VERSION: { message: 'a plugin depends on a version of another plugin that is not loaded', retryable: false },
  PLUGIN_DEPENDENCY_CYCLE: { message: 'plugins depend on each other in a cycle', retryable: false },
  PLUGIN_CAPABILITY_MISSING: { message: 'a plugin requires a capability no configured plugin provides', retryable: false },
  PLUGIN_MESSAGE_CONFLICT: { message: 'two plugins claim the same message type', retryable: false },
  PLUGIN_OPTIONS_INVALID: { message: 'the plugin options do not match the plugin schema', retryable: false },
  PLUGIN_HOOK_FAILED: { message: 'a plugin lifecycle hook failed', retryable: false },
} as const satisfies Record<string, ErrorSpec>;

export type CoreErrorCode = keyof typeof errorCatalogue;

/** A code is SCREAMING_SNAKE_CASE; plugin codes are namespaced by their plugin declaration. */
export const ERROR_CODE_PATTERN = /^[A-Z][A-Z0-9_]{1,63}$/;

/** Codes registered by loaded plugins (`definePlugin({ errors })`), looked up after the core catalogue. */
const pluginErrors = new Map<string, ErrorSpec>();

export function registerPluginErrors(errors: Readonly<Record<string, ErrorSpec>>): void {
  for (const [code, spec] of Object.entries(errors)) pluginErrors.set(code, spec);
}

export function lookupError(code: string): ErrorSpec | undefined {
  return (errorCatalogue as Record<string, ErrorSpec>)[code] ?? pluginErrors.get(code);
}

export function isCoreErrorCode(code: string): code is CoreErrorCode {
  return Object.hasOwn(errorCatalogue, code);
}

/** How an error travels across a worker or wire boundary. */
export interface WireError {
  code: string;
  message: string;
  retryable?: boolean;
  details?: unknown;
}

export class CloudletError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly details: unknown;

  constructor(code: string, message?: string, options: { details?: unknown; cause?: unknown; retryable?: boolean } = {}) {
    const spec = lookupError(code);
    super(message ?? spec?.message ?? code, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CloudletError';
    this.code = code;
    this.retryable = options.retryable ?? spec?.retryable ?? false;
    this.details = options.details;
  }

  toWire(): WireError {
    const wire: WireError = { code: this.code, message: this.message, retryable: this.retryable };
    if (this.details !== undefined) wire.details = this.details;
    return wire;
  }

  /**
   * Rebuilds an error that crossed a boundary. A known code takes `retryable` from the catalogue, so a peer
   * cannot make a permanent failure look retryable; an unknown code (a plugin this side has not loaded) keeps
   * what the wire said.
   */
  static fromWire(wire: WireError): CloudletError {
    const spec = lookupError(wire.code);
    return new CloudletError(wire.code, wire.message, {
      details: wire.details,
      retryable: spec?.retryable ?? wire.retryable ?? false,
    });
  }
}

/** Shorthand that keeps call sites short and the code checked at compile time. */
export function cloudletError(code: CoreErrorCode, message?: string, details?: unknown, cause?: unknown): CloudletError {
  return new CloudletError(code, message, { details, cause });
}

/**
 * Turns anything thrown into a CloudletError. Errors that carry a string `code` in catalogue form keep it
 * (plugin authors may throw plain objects or Errors with a code); everything else becomes `fallback`.
 */
export function toCloudletError(thrown: unknown, fallback: CoreErrorCode = 'HANDLER_ERROR'): CloudletError {
  if (thrown instanceof CloudletError) return thrown;
  if (typeof thrown === 'object' && thrown !== null) {
    const candidate = thrown as { code?: unknown; message?: unknown; details?: unknown };
    if (typeof candidate.code === 'string' && ERROR_CODE_PATTERN.test(candidate.code) && lookupError(candidate.code)) {
      return new CloudletError(candidate.code, typeof candidate.message === 'string' ? candidate.message : undefined, {
        details: candidate.details,
        cause: thrown,
      });
    }
    const message = typeof candidate.message === 'string' ? candidate.message : String(thrown);
    return new CloudletError(fallback, message, { cause: thrown });
  }
  return new CloudletError(fallback, String(thrown));
}

/** What was thrown, as text: plugins may throw strings, null or plain objects as well as Errors. */
export function thrownMessage(thrown: unknown): string {
  if (thrown instanceof Error) return thrown.message;
  try {
    return String(thrown);
  } catch {
    return Object.prototype.toString.call(thrown); // an object without toString (Object.create(null))
  }
}
