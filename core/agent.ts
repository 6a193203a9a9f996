/**
 * The per-host agent: plugins → pools → transport, and the reverse on shutdown. `runAgent` adds the
 * process concerns (signals, exit code) around it.
 */
import { withPluginLogFields } from './handler-log-fields.ts';
import process from 'node:process';
import { CloudletError, registerPluginErrors, thrownMessage } from './errors.ts';
import { makeEvent, makeRequest, messageTypeSchema } from './envelope.ts';
import type { HostConfig } from './config/host-config.ts';
import { createLogger, type Logger } from './logger.ts';
import { Dispatcher, type DispatchObserver, type DispatchOutcome } from './dispatcher.ts';
import { agentSecurity } from './security/agent-security.ts';
import { PoolManager, type PoolSpec } from './pools.ts';
import type { AgentView, CapabilityProvider, DispatchReply, HostIdentity, LoadedPluginSummary, PluginHookContext } from './plugin-api.ts';
import { dependencyOptionsFor } from './plugins/checks.ts';
import type { LoadedPlugin } from './plugins/loader.ts';
import { createAgentTransport, successorWaitMs, type AgentTransport } from './transports/index.ts';
import { identifyFolder, lockFolder, type FolderLock } from './folder-lock.ts';
import { LockWaitCalledOff } from './abstract-lock.ts';
import { AGENT_VERSION } from './version.ts';
import type { LogLevelName } from '../workers/protocol.ts';
import { RUNNING_FROM } from './runtime/package-root.ts';

export interface AgentOptions {
  logger?: Logger;
  /** Told about every answered request (e.g. metrics). */
  observer?: DispatchObserver;
  /** Overrides the configured transport (tests). */
  transport?: AgentTransport;
  /** How often an init or start hook still running is logged (default SLOW_HOOK_LOG_MS; tests shorten it). */
  slowHookLogMs?: number;
}

/** An init or start hook still running is logged this often, naming its plugin. */
export const SLOW_HOOK_LOG_MS = 10_000;

export function summarizePlugins(plugins: readonly LoadedPlugin[]): LoadedPluginSummary[] {
  return plugins.map((p) => ({
    name: p.plugin.name,
    version: p.plugin.version,
    source: p.kind === 'path' ? p.source : p.use,
    provides: [...(p.plugin.provides ?? [])],
    messageTypes: Object.keys(p.plugin.messages ?? {}),
  }));
}

export class Agent {
  readonly config: HostConfig;
  readonly log: Logger;
  readonly host: HostIdentity;
  readonly transport: AgentTransport;
  #pools: PoolManager | undefined;
  #dispatcher: Dispatcher | undefined;
  #started: LoadedPlugin[] = [];
  /** Folders held for this agent (ctx.holdFolder), by identity; released once the agent has stopped. */
  readonly #heldFolders = new Map<string, FolderLock>();
  #stopping: Promise<void> | undefined;
  readonly #observers = new Set<DispatchObserver>();
  #state: 'starting' | 'running' | 'stopping' = 'starting';
  /** Aborted when the start is called off (a signal during it): ends a wait for another agent's lock. */
  #startSignal: AbortSignal | undefined;
  /** The init or start hook running now, with its slow-hook log's timer (a stop ends that timer). */
  #runningHook: { plugin: string; hook: 'init' | 'start'; since: number; timer: ReturnType<typeof setInterval> } | undefined;
  readonly #slowHookLogMs: number;
  /** What monitoring plugins see of this agent (the hook context's `agent`); one object for the agent's life. */
  readonly #view: AgentView = {
    state: () => this.#state,
    transportUp: () => this.#state !== 'starting' && (this.transport.isUp?.() ?? true),
    pools: () => this.#pools?.stats() ?? [],
    inFlight: () => this.inFlight,
    observeDispatch: (observer) => {
      this.#observers.add(observer);
      return () => void this.#observers.delete(observer);
    },
  };

  constructor(config: HostConfig, options: AgentOptions = {}) {
    this.config = config;
    this.#slowHookLogMs = options.slowHookLogMs ?? SLOW_HOOK_LOG_MS;
    this.log = (options.logger ?? createLogger({ level: config.core.log.level, format: config.core.log.format })).child({ host: config.hostId });
    this.host = { id: config.hostId, agentVersion: AGENT_VERSION, startedAt: Date.now() };
    if (options.observer) this.#observers.add(options.observer);
    this.transport =
      options.transport ??
      createAgentTransport(config.core, {
        hostId: config.hostId,
        log: this.log,
        identity: { version: AGENT_VERSION, plugins: config.plugins.map((p) => p.plugin.name), startedAt: this.host.startedAt },
        stopHooks: countStopHooks(config),
        longestCancelGraceMs: longestCancelGraceMs(config),
        handlesRepeats: typesThatHandleRepeats(config),
      });
  }

  get pools(): PoolManager | undefined {
    return this.#pools;
  }

  get inFlight(): number {
    return this.#dispatcher?.inFlightCount ?? 0;
  }

  #hookContext(plugin: LoadedPlugin): PluginHookContext<unknown> {
    const capabilities = new Map<string, string[]>();
    for (const p of this.config.plugins) for (const c of p.plugin.provides ?? []) capabilities.set(c, [...(capabilities.get(c) ?? []), p.plugin.name]);
    return {
      options: plugin.options,
      host: this.host,
      log: withPluginLogFields(this.log.child({ plugin: plugin.plugin.name })),
      emitEvent: async (type, payload) => {
        if (!messageTypeSchema.safeParse(type).success) {
          throw new CloudletError('BAD_ENVELOPE', `plugin "${plugin.plugin.name}" emitted an event with an invalid type ${JSON.stringify(type)}`);
        }
        await this.transport.publishEvent(makeEvent(type, this.host.id, payload));
      },
      capabilities,
      dependencyOptions: dependencyOptionsFor(plugin, this.config.plugins),
      agent: this.#view,
      dispatch: (type, payload, options = {}) => this.#dispatchLocally(type, payload, options),
      holdFolder: (path, setting) => this.#holdFolder(plugin.plugin.name, path, setting),
      transport: {
        kind: this.transport.kind,
        addInboundRoute: (route) => this.transport.addInboundRoute?.(route),
      },
    };
  }

  async #holdFolder(plugin: string, path: string, setting: string | undefined): Promise<void> {
    if (this.#state === 'stopping') throw new Error(`ctx.holdFolder(${JSON.stringify(path)}) was called while the agent stops; call it from an init or start hook`);
    // Another plugin of this agent may hold it already (one that works in another's folder).
    const identity = await identifyFolder(path);
    if (this.#heldFolders.has(identity.key)) return;
    const lock = await lockFolder(identity, {
      host: this.host.id,
      plugin,
      ...(setting ? { setting } : {}),
      state: () => this.#state,
      // A restart that did not wait for the old agent: it is given as long as a socket path's successor.
      stoppingWaitMs: successorWaitMs(this.config.core.shutdown, { stopHooks: countStopHooks(this.config), longestCancelGraceMs: longestCancelGraceMs(this.config) }),
      ...(this.#startSignal ? { signal: this.#startSignal } : {}),
      onWaiting: (message) => this.log.info({ plugin, folder: path }, message),
      onUnavailable: (message) => this.log.warn({ plugin, folder: path }, message),
    });
    if (this.#view.state() === 'stopping') {
      // stop() came while it was taken (an embedder stopping a start): its folders are released already.
      await lock.release();
      throw new Error(`ctx.holdFolder(${JSON.stringify(path)}): the agent began to stop while the folder was being taken`);
    }
    this.#heldFolders.set(lock.key, lock);
  }

  async #releaseFolders(): Promise<void> {
    const locks = [...this.#heldFolders.values()];
    this.#heldFolders.clear();
    for (const lock of locks) await lock.release();
  }

  /** A message from a plugin to this host's own handlers, through the same dispatcher as the wire. */
  #dispatchLocally(
    type: string,
    payload: unknown,
    options: { deadline?: number; onProgress?: (stage: string, detail?: Record<string, unknown>) => void },
  ): Promise<DispatchReply> {
    const dispatcher = this.#dispatcher;
    if (!dispatcher) {
      // Only during the init hooks: the dispatcher is made after them and kept until the process ends.
      const message = `ctx.dispatch(${JSON.stringify(type)}) was called during the init hooks, before the message pools exist; call it from a start hook or later`;
      return Promise.resolve({ ok: false, host: this.host.id, error: { code: 'INTERNAL', message, retryable: false } });
    }
    const request = makeRequest({ type, payload, deadline: options.deadline });
    return new Promise((resolve) => {
      dispatcher.handle({
        body: JSON.stringify(request),
        replyable: true,
        // From a plugin of this agent, not from the wire: signatures are for requests from outside.
        trusted: true,
        progress: (progress) => {
          if (progress.stage !== 'alive') options.onProgress?.(progress.stage, progress.detail);
        },
        reply: async (reply) => {
          resolve(
            reply.ok
              ? { ok: true, host: reply.host, result: reply.result }
              : { ok: false, host: reply.host, error: reply.error ?? { code: 'INTERNAL', message: 'error reply without an error' } },
          );
        },
      });
    });
  }

  /**
   * Starts the agent. `signal` calls the start off where it only waits for another agent to finish stopping
   * (the socket path's lock, a held folder): start() then rejects with LockWaitCalledOff, without the lock it
   * waited for. Work under way (a hook reconciling VMs) is not cut short by it. What the start had done
   * before (locks taken, init hooks run, threads) stays until stop(): call it, as after any failed start.
   */
  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    const { config } = this;
    this.#startSignal = options.signal;
    // Keys first (file modes, key formats): a bad one stops the start before any hook or thread ran.
    // Replay protection lets a repeat of these through too (signed, within its deadline): the handler answers it.
    const security = await agentSecurity(config.core.security, { handlesRepeats: typesThatHandleRepeats(config) });
    for (const p of config.plugins) if (p.plugin.errors) registerPluginErrors(p.plugin.errors);
    // Before any hook: a second agent for the same socket must not touch what the first one runs.
    await this.transport.reserve?.(options.signal ? { signal: options.signal } : {});

    for (const p of config.plugins) {
      await this.#runHook(p, 'init');
      this.#started.push(p);
    }
    const summaries = summarizePlugins(config.plugins);
    const providers: Record<string, CapabilityProvider[]> = {};
    for (const p of config.plugins) {
      for (const [capability, module] of Object.entries(p.plugin.capabilityModules ?? {})) {
        (providers[capability] ??= []).push({ plugin: p.plugin.name, module: String(module), options: p.options });
      }
    }
    const specs: PoolSpec[] = [...config.messages.values()].map((route) => ({
      type: route.type,
      settings: route.pool,
      workerData: {
        handlerUrl: String(route.definition.handler),
        pluginName: route.plugin.plugin.name,
        options: route.plugin.options,
        host: this.host,
        plugins: summaries,
        providers,
        logLevel: config.core.log.level as LogLevelName,
      },
    }));
    const declaredCodes = new Map(config.plugins.map((p) => [p.plugin.name, new Set(Object.keys(p.plugin.errors ?? {}))]));
    this.#pools = new PoolManager(specs, declaredCodes, this.log);
    this.#dispatcher = new Dispatcher({
      authorizer: security.authorizer,
      ...(security.signReply ? { signReply: security.signReply } : {}),
      hostId: config.hostId,
      maxMessageBytes: config.core.limits.maxMessageBytes,
      keepaliveMs: config.core.limits.keepaliveMs,
      observer: (outcome) => this.#notify(outcome),
      routes: config.messages,
      pools: this.#pools,
      log: this.log,
    });
    for (const p of config.plugins) await this.#runHook(p, 'start');
    await this.transport.listen(this.#dispatcher.handle, this.#dispatcher.sealReply);
    this.#state = 'running';
    this.log.info(
      {
        transport: this.transport.describe(),
        plugins: summaries.map((s) => `${s.name}@${s.version}`),
        messageTypes: [...config.messages.keys()],
        code: RUNNING_FROM,
      },
      `agent ${AGENT_VERSION} ready as host "${config.hostId}"`,
    );
  }

  #notify(outcome: DispatchOutcome): void {
    for (const observer of this.#observers) {
      try {
        observer(outcome);
      } catch (error) {
        this.log.warn({ err: error }, 'a dispatch observer threw; ignored');
      }
    }
  }

  /** The init or start hook the agent is waiting for now, if any: named when a start seems stuck. */
  get runningHook(): { plugin: string; hook: 'init' | 'start'; sinceMs: number } | undefined {
    const running = this.#runningHook;
    return running && { plugin: running.plugin, hook: running.hook, sinceMs: Date.now() - running.since };
  }

  async #runHook(plugin: LoadedPlugin, hook: 'init' | 'start' | 'stop'): Promise<void> {
    const fn = plugin.plugin.hooks?.[hook];
    if (!fn) return;
    const name = plugin.plugin.name;
    const since = Date.now();
    // Init and start hooks have no time limit (a reconcile of many VMs may take long), so one that hangs
    // is said out loud, with its plugin's name, while the agent takes no messages. The timer also keeps
    // the event loop alive: a hook awaiting a promise that nothing will ever settle would otherwise let
    // Node end the process with status 13 and not a word. (Stop hooks have their own limit, stopHookMs,
    // and one left behind must not keep the process alive.)
    if (hook !== 'stop') {
      const timer = setInterval(() => {
        const seconds = Math.round((Date.now() - since) / 1000);
        this.log.warn({ plugin: name, hook, seconds }, `plugin "${name}" ${hook} hook has run for ${seconds} s; the agent takes no messages until it finishes`);
      }, this.#slowHookLogMs);
      this.#runningHook = { plugin: name, hook, since, timer };
    }
    try {
      await fn(this.#hookContext(plugin));
    } catch (cause) {
      // The agent's own refusal (ctx.holdFolder), not the plugin's failure: its code tells the operator what to do.
      if (cause instanceof CloudletError && cause.code === 'FOLDER_IN_USE') throw cause;
      // Nor is a start called off while the hook waited for a folder's lock: the agent stops, it did not fail.
      if (cause instanceof LockWaitCalledOff) throw cause;
      throw new CloudletError('PLUGIN_HOOK_FAILED', `plugin "${plugin.plugin.name}" failed in its ${hook} hook: ${thrownMessage(cause)}`, {
        cause,
        details: { plugin: plugin.plugin.name, hook },
      });
    } finally {
      if (hook !== 'stop') this.#endRunningHook();
    }
  }

  #endRunningHook(): void {
    clearInterval(this.#runningHook?.timer);
    this.#runningHook = undefined;
  }

  /**
   * A stop hook, bounded by shutdown.stopHookMs: one that never finishes (a buggy plugin waiting for
   * something) must not keep the agent, and the stop hooks after it, from ever stopping. It is logged and
   * left behind; the process exits soon after anyway.
   */
  async #runStopHook(plugin: LoadedPlugin): Promise<void> {
    const limitMs = this.config.core.shutdown.stopHookMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outOfTime = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), limitMs);
    });
    try {
      const outcome = await Promise.race([this.#runHook(plugin, 'stop').then(() => 'done' as const), outOfTime]);
      if (outcome === 'late') {
        this.log.error({ plugin: plugin.plugin.name, stopHookMs: limitMs }, `plugin "${plugin.plugin.name}" stop hook did not finish within ${limitMs} ms (shutdown.stopHookMs); shutdown goes on without it`);
      }
    } catch (error) {
      this.log.error({ err: error, plugin: plugin.plugin.name }, 'plugin stop hook failed; continuing shutdown');
    } finally {
      clearTimeout(timer);
    }
  }

  /** Graceful stop: no new messages, in-flight ones finish or are cancelled after the grace period. */
  stop(reason = 'stop requested'): Promise<void> {
    this.#stopping ??= this.#stop(reason);
    return this.#stopping;
  }

  async #stop(reason: string): Promise<void> {
    this.#state = 'stopping';
    this.#endRunningHook();
    const graceMs = this.config.core.shutdown.graceMs;
    this.log.info({ reason, inFlight: this.inFlight, graceMs }, 'shutting down');
    this.#dispatcher?.stopAccepting();
    let drained = { finished: 0, cancelled: 0 };
    try {
      await this.transport.stopAccepting();
      drained = (await this.#dispatcher?.drain(graceMs)) ?? drained;
      for (const p of [...this.#started].reverse()) await this.#runStopHook(p);
      await this.#pools?.destroy();
    } finally {
      // After the stop hooks, and even after a failure above: a successor waits for these.
      await this.#releaseFolders();
      // Last: it releases the socket path's lock, which a successor waits for.
      await this.transport.close();
    }
    this.log.info(drained, 'stopped');
  }
}

const SHUTDOWN_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

/**
 * Runs an agent until SIGTERM/SIGINT/SIGHUP; resolves with the process exit code. The signals are taken from the
 * start: one that comes while the agent starts (systemd stopping a unit whose plugins take a while to
 * init) lets the start finish and then stops the agent as usual, stop hooks included. A start that only
 * waits for another agent to finish stopping (its socket path's or a folder's lock) is called off at once
 * instead: it has not started serving, and that wait may last minutes. A second signal, at any time, means
 * "now".
 */
export async function runAgent(config: HostConfig, options: AgentOptions = {}): Promise<number> {
  const agent = new Agent(config, options);
  let received: NodeJS.Signals | undefined;
  let starting = true;
  let signalled!: (signal: NodeJS.Signals) => void;
  const callOff = new AbortController();
  const stopRequested = new Promise<NodeJS.Signals>((resolve) => (signalled = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (received) {
      agent.log.warn('second signal: exiting without waiting for in-flight messages');
      process.exit(130);
    }
    received = signal;
    if (starting) {
      const hook = agent.runningHook;
      const waiting = hook ? ` (waiting for plugin "${hook.plugin}" ${hook.hook} hook, running for ${Math.round(hook.sinceMs / 1000)} s; a second signal exits now)` : '';
      agent.log.info({ signal, ...(hook ? { plugin: hook.plugin, hook: hook.hook } : {}) }, `signal during start-up: stopping once the start is done, or now if it waits for another agent to stop${waiting}`);
      callOff.abort();
    }
    signalled(signal);
  };
  // SIGHUP too: a terminal that goes away would otherwise end the agent at once (Node's default), with no
  // stop hook run and a managed dnsmasq left behind.
  for (const name of SHUTDOWN_SIGNALS) process.on(name, onSignal);
  try {
    try {
      await agent.start({ signal: callOff.signal });
    } catch (error) {
      if (error instanceof LockWaitCalledOff) {
        agent.log.info({ signal: received }, `stopped without starting: after the ${received}, the start was called off at its wait for ${error.waitingFor}`);
        await agent.stop('signal during start-up').catch(() => undefined);
        return 0;
      }
      agent.log.fatal({ err: error, code: (error as { code?: string }).code }, `agent failed to start: ${(error as Error).message}`);
      await agent.stop('start failed').catch(() => undefined);
      return 1;
    }
    starting = false;
    await agent.stop(await stopRequested);
    return 0;
  } finally {
    for (const name of SHUTDOWN_SIGNALS) process.off(name, onSignal);
  }
}

function countStopHooks(config: HostConfig): number {
  return config.plugins.filter((p) => p.plugin.hooks?.stop).length;
}

function longestCancelGraceMs(config: HostConfig): number {
  return Math.max(0, ...[...config.messages.values()].map((route) => route.pool.cancelGraceMs));
}

/** The message types whose plugins answer repeats of a request id themselves (MessageDefinition.handlesRepeats). */
function typesThatHandleRepeats(config: HostConfig): Set<string> {
  return new Set(config.plugins.flatMap((p) => Object.entries(p.plugin.messages ?? {}).filter(([, definition]) => definition.handlesRepeats).map(([type]) => type)));
}
