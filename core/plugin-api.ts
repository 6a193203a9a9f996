/**
 * The typed, versioned API that plugins are written against. Everything a plugin author needs is exported
 * from here (compiled to dist/, it is the package export `cloudlet/plugin-api`). Nothing in this module has side
 * effects or runtime dependencies beyond zod, so it loads in worker threads and under Deno.
 */
import { z } from 'zod';
import { CloudletError, type ErrorSpec } from './errors.ts';
import { CORE_API_VERSION } from './version.ts';
import { importModule } from './runtime/import-module.ts';

export { z, CloudletError, CORE_API_VERSION };
// The ip-discovery capability's contract, for plugins that provide it (core API 1.3; readOnce since 1.7).
export { normalizeMac, readOnce, scopeOf } from './capabilities/ip-discovery.ts';
export type { AddressFamily, AddressScope, DiscoveredAddress, IpDiscoveryContext, IpDiscoveryStrategy, VmNetworkIdentity } from './capabilities/ip-discovery.ts';
export type { ErrorSpec };

/** How a message type's worker pool is sized and bounded. Config (`pools.<type>`) overrides these. */
export interface PoolSettings {
  /** Threads kept alive while idle. 0 saves memory; 1 saves the first message a worker start-up. */
  minThreads: number;
  maxThreads: number;
  /**
   * Messages one thread works on at once (default 1). Above 1, a thread whose handler awaits (a child
   * process, a socket, a lease) takes the next message meanwhile, and messages reach a busy thread without
   * waking it. The price: a handler that blocks its thread delays the others on it, and one that is stopped
   * (it ignored its cancel) or crashes takes them down with it (`WORKER_CRASHED`). Added in core API 1.9.
   */
  tasksPerThread: number;
  /** An idle thread above `minThreads` is stopped after this long. */
  idleTimeoutMs: number;
  /** Messages waiting for a thread; one more is refused with `BUSY` instead of growing memory. */
  maxQueue: number;
  /**
   * The most time the host spends on one message, from the moment it is accepted (waiting for a thread
   * counts); past it the handler is cancelled and the caller gets `TIMEOUT`.
   */
  timeoutMs: number;
  /** After cancelling, how long the handler may react to its AbortSignal before its thread is terminated. */
  cancelGraceMs: number;
  /** Heap limit (MiB) of each worker thread; a handler that exceeds it crashes only its worker. */
  maxMemoryMb: number;
}

export interface MessageDefinition<Payload extends z.ZodType = z.ZodType> {
  /** Validated in the agent before the message reaches a worker; the handler receives `z.output<Payload>`. */
  payload: Payload;
  /**
   * The module whose default export handles the message, as an absolute URL — write
   * `new URL('./handler.ts', import.meta.url)`. It runs in a worker thread and must be stateless.
   */
  handler: URL | string;
  description?: string;
  pool?: Partial<PoolSettings>;
  /**
   * A payload field (e.g. `vm`): messages whose payloads carry the same value there — of any type of this
   * plugin — run one at a time, in arrival order; others run in parallel. Added in core API 1.2.
   */
  serializeBy?: string;
  /**
   * The handler recognises a repeat of a request id itself (by `ctx.message.id`) and answers it as it is now:
   * on RabbitMQ, a finished request sent again runs the handler again instead of being answered from the
   * host's stored outcome, which may have gone stale (the VM it made deleted or stopped since). Added in
   * core API 1.10.
   */
  handlesRepeats?: boolean;
  /**
   * Message types of this same plugin whose requests this host has accepted and not yet answered (waiting
   * for a thread or a lock, or running): the handler receives their ids in `ctx.inFlight`, as they were when
   * this message was accepted. For a handler that must know what is about to happen on this host, not only
   * what is on disk (qemu-backend's `find-create` sees a `create-vm` that waits for its thread). Added in
   * core API 1.11.
   */
  seesInFlight?: readonly string[];
}

/** A minimal, pino-compatible logger surface available in hooks and handlers. */
export interface PluginLogger {
  trace(obj: object | string, msg?: string): void;
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

export interface HostIdentity {
  id: string;
  agentVersion: string;
  /** Epoch milliseconds at which the agent started. */
  startedAt: number;
}

/** Summary of a loaded plugin, as `host-info` and `cloudlet plugins` report it. */
export interface LoadedPluginSummary {
  name: string;
  version: string;
  source: string;
  provides: string[];
  messageTypes: string[];
}

/** What lifecycle hooks receive. Hooks run in the agent's main thread, once per agent. */
export interface PluginHookContext<Options> {
  options: Options;
  host: HostIdentity;
  log: PluginLogger;
  /** Publishes an event envelope on the agent's transport (e.g. a sweep summary). */
  emitEvent(type: string, payload?: unknown): Promise<void>;
  /** The capabilities provided by loaded plugins, mapped to the providing plugin names in load (dependency) order. */
  capabilities: ReadonlyMap<string, readonly string[]>;
  /**
   * Sends a message to this host's own handlers — same validation, same pools, same limits as one arriving
   * on the transport — and resolves with the reply (which may carry an error). For protocol plugins that
   * translate another wire format into cloudlet's messages. Added in core API 1.4.
   */
  dispatch(type: string, payload: unknown, options?: { deadline?: number; onProgress?: (stage: string, detail?: Record<string, unknown>) => void }): Promise<DispatchReply>;
  /**
   * The validated options (defaults filled in) of each plugin named in this plugin's `dependencies`, by
   * name; frozen. So a plugin that works on another's data need not make operators repeat its settings
   * (the sweeper reads qemu-backend's folders). Added in core API 1.6.
   */
  dependencyOptions: Readonly<Record<string, unknown>>;
  /**
   * Holds a folder of lasting state for this agent alone, until the agent has stopped (after the stop hooks;
   * the kernel frees it if the process dies). Another agent on this machine that holds the same folder (by
   * its device and inode: a link or bind mount to it counts) makes this throw FOLDER_IN_USE, naming that
   * agent; one that is stopping is waited for. Call it from an init or start hook, before touching the
   * folder; the folder must exist. Holding a folder
   * this agent already holds (another of its plugins) is a no-op. `setting` names the option that set the
   * folder, for the refusal's advice. Added in core API 1.13.
   */
  holdFolder(path: string, setting?: string): Promise<void>;
  /** Read-only views of the running agent, for monitoring plugins (metrics, health). Added in core API 1.5. */
  agent: AgentView;
  /** The agent's transport, for routing plugins. Added in core API 1.1. */
  transport: {
    kind: string;
    /** Takes part in a kind of routing (see docs/PROTOCOL.md); a no-op on transports without routing. */
    addInboundRoute(route: 'direct' | 'any' | 'broadcast'): void;
  };
}

/** What a monitoring plugin sees of its agent (core API 1.5). Every call is cheap and never throws. */
export interface AgentView {
  /** `starting` until the transport takes messages, then `running`; `stopping` from the first step of shutdown. */
  state(): 'starting' | 'running' | 'stopping';
  /** Whether messages can arrive now: the local socket listens, the broker connection is up. */
  transportUp(): boolean;
  /** One entry per message type (empty before the pools exist). */
  pools(): AgentPoolStats[];
  /** Messages being handled right now. */
  inFlight(): number;
  /** `observer` is told about every message answered or refused; it must not block. Returns the function that stops it. */
  observeDispatch(observer: (outcome: ObservedDispatch) => void): () => void;
}

export interface AgentPoolStats {
  type: string;
  threads: number;
  queued: number;
  running: number;
  completed: number;
  settings: PoolSettings;
}

/** One answered or refused message, as `observeDispatch` reports it. */
export interface ObservedDispatch {
  /** Undefined when the message was too broken to tell. */
  type: string | undefined;
  ok: boolean;
  code?: string;
  /** From acceptance to reply; 0 for messages refused before reaching a pool. */
  elapsedMs: number;
}

/** A reply as `dispatch` returns it: the envelope's outcome, without the wire fields. */
export type DispatchReply =
  | { ok: true; host: string; result: unknown }
  | { ok: false; host: string; error: { code: string; message: string; retryable?: boolean; details?: unknown } };

export interface PluginHooks<Options> {
  /** Runs after every plugin loaded and validated, in dependency order, before any message is taken. */
  init?(context: PluginHookContext<Options>): void | Promise<void>;
  /** Runs after every init, just before the transport starts taking messages. */
  start?(context: PluginHookContext<Options>): void | Promise<void>;
  /** Runs on shutdown, in reverse order, after in-flight messages finished or were cancelled. */
  stop?(context: PluginHookContext<Options>): void | Promise<void>;
}

export interface PluginDefinition<
  OptionsSchema extends z.ZodType = z.ZodType,
  Messages extends Record<string, MessageDefinition> = Record<string, MessageDefinition>,
> {
  /** Unique, lowercase, e.g. `qemu-backend` or `acme-billing`. */
  name: string;
  /** The plugin's own version (semver). */
  version: string;
  /** The core API range the plugin supports, e.g. `^1.0.0`. */
  api: string;
  description?: string;
  /** Other plugins that must be configured on the same host, with a semver range each. */
  dependencies?: Record<string, string>;
  /** Capabilities this plugin offers to others (e.g. `vm-backend`, `ip-discovery`). */
  provides?: string[];
  /** Capabilities some other configured plugin must provide. */
  requires?: string[];
  /**
   * For each provided capability that other plugins' handlers call into: the module implementing it (an
   * absolute URL, loaded in worker threads; its default export follows the capability's contract, e.g.
   * `IpDiscoveryStrategy` in core/capabilities/ip-discovery.ts). Added in core API 1.3.
   */
  capabilityModules?: Record<string, URL | string>;
  /** Validates `plugins[].options` from the host config; defaults to "no options allowed". */
  options?: OptionsSchema;
  messages?: Messages;
  /** Error codes the plugin's handlers may throw, beyond the core catalogue. */
  errors?: Record<string, ErrorSpec>;
  hooks?: PluginHooks<z.output<OptionsSchema>>;
  /**
   * Checks what a schema alone cannot: the plugin's parsed options against the options of the plugins it
   * depends on. Runs at load, after every plugin's options parsed and its dependencies were found, so
   * `cloudlet config check` reports the problems (as PLUGIN_OPTIONS_INVALID) and an agent does not start
   * with them. Must not do I/O. Added in core API 1.8.
   */
  checkOptions?(options: z.output<OptionsSchema>, context: OptionsCheckContext): readonly OptionsProblem[];
}

/** What `checkOptions` gets beside the plugin's own options. */
export interface OptionsCheckContext {
  /** As in the hook context: the validated options of each plugin named in `dependencies`. */
  dependencyOptions: Readonly<Record<string, unknown>>;
}

/** One problem `checkOptions` found. */
export interface OptionsProblem {
  /** Where in the plugin's options, e.g. `qemu.stateDir`; absent: the options as a whole. */
  path?: string;
  message: string;
  /** What would be accepted, in words. */
  allowed?: string;
}

export const PLUGIN_BRAND = Symbol.for('cloudlet.plugin');

export type CloudletPlugin<
  OptionsSchema extends z.ZodType = z.ZodType,
  Messages extends Record<string, MessageDefinition> = Record<string, MessageDefinition>,
> = Readonly<PluginDefinition<OptionsSchema, Messages>> & { readonly [PLUGIN_BRAND]: string };

/**
 * Declares a plugin. The returned object is what the module's default export must be. Type parameters are
 * inferred, so `hooks` see the parsed options type and `messages` keep their payload schemas.
 */
export function definePlugin<OptionsSchema extends z.ZodType = z.ZodObject<{}>, Messages extends Record<string, MessageDefinition> = {}>(
  definition: PluginDefinition<OptionsSchema, Messages>,
): CloudletPlugin<OptionsSchema, Messages> {
  return Object.freeze({ ...definition, [PLUGIN_BRAND]: CORE_API_VERSION });
}

/** What a handler receives besides its payload. */
export interface HandlerContext<Options = unknown> {
  /** The plugin's validated options from this host's config. */
  options: Options;
  host: HostIdentity;
  /**
   * `deadline`: when the handler is cancelled (epoch ms). `cancelGraceMs` (core API 1.12): how long it may
   * still run after its signal aborts before its thread is stopped, so `deadline + cancelGraceMs` bounds
   * this run's work on a loaded host only loosely (timers fire late); an abort at shutdown can come earlier.
   */
  message: { id: string; type: string; deadline: number; cancelGraceMs: number };
  /** Logger bound to this message (its id and type are on every line). */
  log: PluginLogger;
  /** Aborted when the message times out, passes its deadline, or the agent shuts down past its grace period. */
  signal: AbortSignal;
  /** Streams a progress update to the caller, e.g. `progress('starting', { vm })`. */
  progress(stage: string, detail?: Record<string, unknown>): void;
  /** Loaded plugins; for introspection handlers such as `host-info`. */
  plugins: readonly LoadedPluginSummary[];
  /** For each capability, the plugins providing a module for it, in load order: config order, a plugin after its dependencies (core API 1.3). */
  providers: Readonly<Record<string, readonly CapabilityProvider[]>>;
  /**
   * For each type named in the definition's `seesInFlight`: the ids of that type's requests this host had
   * accepted and not yet answered when it accepted this message (this message itself excluded). An empty
   * object for a definition without `seesInFlight`. Core API 1.11.
   */
  inFlight: Readonly<Record<string, readonly string[]>>;
}

/** A plugin's implementation of a capability, as a handler of another plugin sees it. */
export interface CapabilityProvider {
  plugin: string;
  /** Absolute URL of the module; `import()` it in the handler. */
  module: string;
  /** The providing plugin's validated options. */
  options: unknown;
}

/** Imports every provider module of a capability, in load order (see `providers`). */
export async function loadProviders<T>(context: Pick<HandlerContext, 'providers'>, capability: string): Promise<{ plugin: string; options: unknown; implementation: T }[]> {
  const providers = context.providers[capability] ?? [];
  return Promise.all(
    providers.map(async (provider) => ({
      plugin: provider.plugin,
      options: provider.options,
      implementation: (await importModule<{ default: T }>(provider.module)).default,
    })),
  );
}

export type Handler<Payload = unknown, Options = unknown, Result = unknown> = (
  payload: Payload,
  context: HandlerContext<Options>,
) => Result | Promise<Result>;

/**
 * Declares a handler module's default export with types taken from the payload and options schemas:
 * `export default defineHandler(schemas.createVm, optionsSchema, async (payload, ctx) => …)`.
 * A plain `export default async function (payload, ctx) {…}` works too.
 */
export function defineHandler<PayloadSchema extends z.ZodType, OptionsSchema extends z.ZodType, Result>(
  _payload: PayloadSchema,
  _options: OptionsSchema,
  handler: Handler<z.output<PayloadSchema>, z.output<OptionsSchema>, Result>,
): Handler<z.output<PayloadSchema>, z.output<OptionsSchema>, Result> {
  return handler;
}

/**
 * What a plugin module may export instead of a plugin: a factory that receives this kit. Plugins kept
 * outside any npm project (a single file in /etc/cloudlet/plugins) use it to get zod and the helpers
 * from the agent instead of importing them.
 */
export const pluginKit = { definePlugin, defineHandler, z, CloudletError, CORE_API_VERSION } as const;
export type PluginKit = typeof pluginKit;
export type PluginFactory = (kit: PluginKit) => CloudletPlugin | Promise<CloudletPlugin>;
