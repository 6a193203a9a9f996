/**
 * protocol-aetherscale: this host speaks the wire format of aetherscale, the system cloudlet grew out of,
 * so its clients (scripts, CLI) drive cloudlet hosts unchanged. Each command becomes cloudlet messages sent
 * through ctx.dispatch; see docs/AETHERSCALE.md for the mapping.
 */
import process from 'node:process';
import { definePlugin, type HostIdentity } from '../../core/plugin-api.ts';
import { AetherscaleBridge, maskCredentials } from './broker.ts';
import { aetherscaleOptionsSchema, brokerUrlProblem, type AetherscaleOptions } from './options.ts';

/** The running bridge of each agent (hooks get a fresh context per call; the host identity is the agent's). */
const bridges = new WeakMap<HostIdentity, AetherscaleBridge>();

/** How long the stop hook waits for requests still being answered before it closes the connection. */
const STOP_GRACE_MS = 10_000;

export function brokerUrl(options: AetherscaleOptions, env: NodeJS.ProcessEnv = process.env): string {
  const url = options.url ?? env.CLOUDLET_AMQP_URL;
  if (!url) throw new Error('no broker URL: set the plugin option "url" or the environment variable CLOUDLET_AMQP_URL');
  if (!/^amqps?:\/\//.test(url)) throw new Error(`CLOUDLET_AMQP_URL must be an amqp:// or amqps:// URL, got ${JSON.stringify(maskCredentials(url).slice(0, 80))}`);
  const problem = brokerUrlProblem(url);
  if (problem) throw new Error(`the broker URL ${JSON.stringify(maskCredentials(url).slice(0, 80))} cannot be used: ${problem}`);
  return url;
}

export default definePlugin({
  name: 'protocol-aetherscale',
  version: '1.0.0',
  // ctx.dispatch arrived in core API 1.4, checkOptions in 1.8.
  api: '^1.8.0',
  description: "aetherscale's RabbitMQ wire format (exchange `computing`), translated into cloudlet's VM messages.",
  dependencies: { 'qemu-backend': '^1.0.0' },
  options: aetherscaleOptionsSchema,
  // Every create-vm asks for these: past qemu-backend's per-VM limits, each would fail with VM_LIMIT.
  checkOptions: (options, { dependencyOptions }) => {
    const limits = (dependencyOptions['qemu-backend'] as { limits?: { maxMemoryMiB?: unknown; maxVcpus?: unknown } } | undefined)?.limits;
    const problems: { path: string; message: string; allowed: string }[] = [];
    if (typeof limits?.maxMemoryMiB === 'number' && options.memory > limits.maxMemoryMiB) {
      problems.push({ path: 'memory', message: `${options.memory} MiB is more than qemu-backend allows one VM (limits.maxMemoryMiB: ${limits.maxMemoryMiB}): every create-vm would fail`, allowed: `16-${limits.maxMemoryMiB}` });
    }
    if (typeof limits?.maxVcpus === 'number' && options.vcpus > limits.maxVcpus) {
      problems.push({ path: 'vcpus', message: `${options.vcpus} vCPUs are more than qemu-backend allows one VM (limits.maxVcpus: ${limits.maxVcpus}): every create-vm would fail`, allowed: `1-${limits.maxVcpus}` });
    }
    return problems;
  },
  hooks: {
    init(ctx) {
      // Before any side effect: a host without a broker URL fails at start-up, not at the first request.
      brokerUrl(ctx.options);
    },
    async start(ctx) {
      const bridge = new AetherscaleBridge({ url: brokerUrl(ctx.options), host: ctx.host.id, options: ctx.options, dispatch: ctx.dispatch, log: ctx.log });
      await bridge.start();
      bridges.set(ctx.host, bridge);
    },
    async stop(ctx) {
      const bridge = bridges.get(ctx.host);
      bridges.delete(ctx.host);
      await bridge?.stop(STOP_GRACE_MS);
    },
  },
});
