/**
 * metrics: a Prometheus endpoint and a health endpoint for this host, fed by what the agent knows (core API
 * 1.5 `ctx.agent`): message counts and latencies by type, pool utilisation and queue depth, agent and
 * transport state, and VMs by state from the host's own list-vms. Everything runs in the agent's main thread.
 */
import { CloudletError, definePlugin, type PluginHookContext } from '../../core/plugin-api.ts';
import { metricsOptionsSchema, type MetricsOptions } from './options.ts';
import { createAgentMetrics } from './registry.ts';
import { splitListen, startEndpoint, stopEndpoint } from './server.ts';
import { vmStateCache } from './vm-states.ts';

/** Running endpoints by listen address, between the start and stop hooks (two agents in one process: tests). */
const running = new Map<string, { stop(): Promise<void> }>();

async function start(ctx: PluginHookContext<MetricsOptions>): Promise<void> {
  const { options } = ctx;
  const { agent } = ctx;
  if (running.has(options.listen)) throw new CloudletError('METRICS_LISTEN_FAILED', `a metrics endpoint already listens on ${options.listen} in this process`);
  const metrics = createAgentMetrics({
    agent,
    host: ctx.host,
    transportKind: ctx.transport.kind,
    processMetrics: options.processMetrics,
    ...(options.vmStatesMaxAgeMs > 0 ? { vmStates: vmStateCache(ctx.dispatch, options.vmStatesMaxAgeMs) } : {}),
  });
  const unobserve = agent.observeDispatch(metrics.observe);
  const { host, port } = splitListen(options.listen);
  let endpoint;
  try {
    endpoint = await startEndpoint({
      host,
      port,
      metricsPath: options.metricsPath,
      healthPath: options.healthPath,
      registry: metrics.registry,
      agent,
      hostId: ctx.host.id,
      transportKind: ctx.transport.kind,
      onError: (error) => ctx.log.warn({ err: error, code: 'METRICS_COLLECT_FAILED' }, 'collecting metrics failed'),
    });
  } catch (cause) {
    unobserve();
    const reason = (cause as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'the address is in use' : (cause as Error).message;
    throw new CloudletError('METRICS_LISTEN_FAILED', `the metrics endpoint cannot listen on ${options.listen}: ${reason}`, { cause, details: { listen: options.listen } });
  }
  const { server, address } = endpoint;
  running.set(options.listen, {
    async stop() {
      unobserve();
      await stopEndpoint(server);
    },
  });
  ctx.log.info({ listen: address, metrics: options.metricsPath, health: options.healthPath }, `metrics on http://${address}${options.metricsPath}, health on http://${address}${options.healthPath}`);
}

async function stop(ctx: PluginHookContext<MetricsOptions>): Promise<void> {
  const endpoint = running.get(ctx.options.listen);
  running.delete(ctx.options.listen);
  await endpoint?.stop();
}

export default definePlugin({
  name: 'metrics',
  version: '1.0.0',
  api: '^1.5.0',
  description: 'Prometheus metrics (message counts and latencies, pools, VMs by state, transport) and a health endpoint.',
  options: metricsOptionsSchema,
  errors: {
    METRICS_LISTEN_FAILED: { message: 'the metrics endpoint cannot listen on the configured address', retryable: false },
  },
  hooks: { start, stop },
});
