/**
 * What the plugin reads of its agent: the hook context's `agent` (core API 1.5). Declared here as the plugin
 * uses it, so the plugin states its needs in one place; the core's `AgentView` satisfies it.
 */
import { CloudletError, type PluginHookContext, type PoolSettings } from '../../core/plugin-api.ts';

export interface ObservedDispatch {
  type: string | undefined;
  ok: boolean;
  code?: string;
  elapsedMs: number;
}

export interface MonitoredAgent {
  state(): 'starting' | 'running' | 'stopping';
  transportUp(): boolean;
  pools(): { type: string; threads: number; queued: number; running: number; completed: number; settings: PoolSettings }[];
  inFlight(): number;
  observeDispatch(observer: (outcome: ObservedDispatch) => void): () => void;
}

/** The agent view of the hook context; a core without it (API < 1.5) never loads this plugin (`api: ^1.5.0`). */
export function monitoredAgent(ctx: PluginHookContext<unknown>): MonitoredAgent {
  const agent = (ctx as { agent?: MonitoredAgent }).agent;
  if (!agent) throw new CloudletError('METRICS_LISTEN_FAILED', 'this agent does not expose ctx.agent (core API 1.5 or newer is needed)');
  return agent;
}
