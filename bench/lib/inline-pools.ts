/**
 * The baseline of benchmark 4: a PoolManager that runs each handler in the calling thread, with the same
 * context a worker would give it. Everything else on the request path (transport, dispatcher, validation)
 * stays the product's own, so the difference to the real pools is the worker hop alone.
 */
import { summarizePlugins } from '../../core/agent.ts';
import type { MessageRoute } from '../../core/config/host-config.ts';
import { cloudletError } from '../../core/errors.ts';
import type { Handler, HandlerContext, HostIdentity, LoadedPluginSummary } from '../../core/plugin-api.ts';
import type { LoadedPlugin } from '../../core/plugins/loader.ts';
import { PoolManager, type PoolTask, type RunHooks, type RunOutcome } from '../../core/pools.ts';

const quietLog = { trace: () => undefined, debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

export class InlinePools extends PoolManager {
  readonly #routes: ReadonlyMap<string, MessageRoute>;
  readonly #host: HostIdentity;
  readonly #plugins: LoadedPluginSummary[];
  readonly #handlers = new Map<string, Promise<Handler>>();

  constructor(routes: ReadonlyMap<string, MessageRoute>, host: HostIdentity, plugins: readonly LoadedPlugin[]) {
    super([]);
    this.#routes = routes;
    this.#host = host;
    this.#plugins = summarizePlugins(plugins);
  }

  override async run(task: PoolTask, hooks: RunHooks = {}): Promise<RunOutcome> {
    const route = this.#routes.get(task.type);
    if (!route) return { ok: false, error: cloudletError('UNKNOWN_TYPE', `no handler for "${task.type}"`) };
    const url = String(route.definition.handler);
    let handler = this.#handlers.get(url);
    if (!handler) {
      handler = import(url).then((module: { default: Handler }) => module.default);
      this.#handlers.set(url, handler);
    }
    let controller: AbortController | undefined;
    const context: HandlerContext = {
      options: route.plugin.options,
      host: this.#host,
      message: { id: task.id, type: task.type, deadline: task.deadline, cancelGraceMs: route.pool.cancelGraceMs },
      log: hooks.log ?? quietLog,
      // Made when read, as the worker does (workers/handler-worker.ts), and following the message's cancel.
      get signal() {
        if (!controller) {
          const made = new AbortController();
          hooks.cancellation?.onCancel((reason) => made.abort(reason));
          controller = made;
        }
        return controller.signal;
      },
      progress: (stage, detail) => hooks.onProgress?.(stage, detail),
      plugins: this.#plugins,
      providers: {},
      inFlight: task.inFlight?.() ?? {},
    };
    try {
      const result = await (await handler)(task.payload, context);
      // What the worker does too: results cross as JSON.
      return { ok: true, result: result === undefined ? undefined : (JSON.parse(JSON.stringify(result)) as unknown) };
    } catch (thrown) {
      return { ok: false, error: cloudletError('HANDLER_ERROR', (thrown as Error).message ?? String(thrown)) };
    }
  }

  override async destroy(): Promise<void> {
    this.#handlers.clear();
  }
}
