/**
 * The Prometheus metrics of one agent, in their own prom-client registry (never the global one: two agents in
 * one process keep apart). Message counts and latencies are pushed by the dispatcher's observer; pool, state
 * and VM gauges are read when scraped.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AgentView, ObservedDispatch } from '../../core/plugin-api.ts';
import type { VmStateCounts } from './vm-states.ts';

/** Seconds; VM operations take minutes, host-info milliseconds. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export interface AgentMetrics {
  registry: Registry;
  observe(outcome: ObservedDispatch): void;
}

export interface AgentMetricsOptions {
  agent: AgentView;
  host: { id: string; agentVersion: string };
  transportKind: string;
  processMetrics: boolean;
  /** Undefined: no VM gauge. */
  vmStates?: () => Promise<VmStateCounts>;
}

export function createAgentMetrics(options: AgentMetricsOptions): AgentMetrics {
  const { agent } = options;
  const registry = new Registry();
  const registers = [registry];
  // Label values stay bounded: a type this host does not handle is "other", an undecodable message "invalid".
  // The pools exist before the first message or scrape and never change: read them once, on first use
  // (not per observed message).
  let types: Set<string> | undefined;
  const knownTypes = () => (types ??= new Set(agent.pools().map((p) => p.type)));
  const typeLabel = (type: string | undefined) => (type === undefined ? 'invalid' : knownTypes().has(type) ? type : 'other');

  const messages = new Counter({
    name: 'cloudlet_messages_total',
    help: 'Messages answered or refused by this host, by type, outcome (ok or error) and error code.',
    labelNames: ['type', 'outcome', 'code'],
    registers,
  });
  const latency = new Histogram({
    name: 'cloudlet_message_duration_seconds',
    help: 'Time from acceptance to reply of messages that ran (refusals are not timed), by type and outcome.',
    labelNames: ['type', 'outcome'],
    buckets: LATENCY_BUCKETS,
    registers,
  });

  const poolGauge = (name: string, help: string, value: (p: ReturnType<AgentView['pools']>[number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['type'],
      registers,
      collect() {
        this.reset();
        for (const pool of agent.pools()) this.set({ type: pool.type }, value(pool));
      },
    });
  poolGauge('cloudlet_pool_threads', 'Worker threads alive in the pool of a message type.', (p) => p.threads);
  poolGauge('cloudlet_pool_max_threads', 'Configured maximum of worker threads for a message type.', (p) => p.settings.maxThreads);
  poolGauge('cloudlet_pool_running', 'Messages of a type running in a worker now.', (p) => p.running);
  poolGauge('cloudlet_pool_queued', 'Messages of a type waiting for a worker (queue depth).', (p) => p.queued);
  poolGauge('cloudlet_pool_max_queue', 'Configured queue limit of a message type; one more is refused with BUSY.', (p) => p.settings.maxQueue);
  poolGauge('cloudlet_pool_tasks_per_thread', 'Configured number of messages one thread of a message type works on at once.', (p) => p.settings.tasksPerThread);
  poolGauge('cloudlet_pool_utilisation_ratio', 'Running messages over what the threads can hold (maxThreads × tasksPerThread), 0 to 1.', (p) => {
    const capacity = p.settings.maxThreads * p.settings.tasksPerThread;
    return capacity > 0 ? p.running / capacity : 0;
  });

  new Gauge({
    name: 'cloudlet_messages_in_flight',
    help: 'Messages being handled by this host now.',
    registers,
    collect() {
      this.set(agent.inFlight());
    },
  });
  new Gauge({
    name: 'cloudlet_agent_state',
    help: 'The agent state: 1 for the current one of starting, running, stopping.',
    labelNames: ['state'],
    registers,
    collect() {
      for (const state of ['starting', 'running', 'stopping'] as const) this.set({ state }, agent.state() === state ? 1 : 0);
    },
  });
  new Gauge({
    name: 'cloudlet_transport_up',
    help: 'Whether messages can reach this host: 1 when the local socket listens or the broker connection is up.',
    labelNames: ['transport'],
    registers,
    collect() {
      this.set({ transport: options.transportKind }, agent.transportUp() ? 1 : 0);
    },
  });
  new Gauge({
    name: 'cloudlet_agent_info',
    help: 'Always 1; the labels say which host and version this is.',
    labelNames: ['host', 'version', 'transport'],
    registers,
  }).set({ host: options.host.id, version: options.host.agentVersion, transport: options.transportKind }, 1);

  if (options.vmStates) {
    const vmStates = options.vmStates;
    // A host without a VM backend has no VMs to count (and asking would only add UNKNOWN_TYPE refusals).
    // Both gauges ask the same cache, so one scrape sees one answer whatever order they are collected in.
    const current = async () => (knownTypes().has('list-vms') ? vmStates() : { counts: new Map<string, number>(), ok: false });
    new Gauge({
      name: 'cloudlet_vms',
      help: "VMs on this host by state, from the host's list-vms (cached briefly).",
      labelNames: ['state'],
      registers,
      async collect() {
        const { counts } = await current();
        this.reset();
        for (const [state, count] of counts) this.set({ state }, count);
      },
    });
    new Gauge({
      name: 'cloudlet_vms_known',
      help: 'Whether cloudlet_vms is current: 0 when list-vms failed or the host has no VM backend.',
      registers,
      async collect() {
        this.set((await current()).ok ? 1 : 0);
      },
    });
  }
  if (options.processMetrics) collectDefaultMetrics({ register: registry });

  return {
    registry,
    observe(outcome) {
      const type = typeLabel(outcome.type);
      const result = outcome.ok ? 'ok' : 'error';
      messages.inc({ type, outcome: result, code: outcome.ok ? '' : (outcome.code ?? 'UNKNOWN') });
      const refused = !outcome.ok && outcome.elapsedMs === 0;
      if (!refused) latency.observe({ type, outcome: result }, outcome.elapsedMs / 1000);
    },
  };
}
