/** What the runner hands each benchmark: the mode, a cleanup scope, logging, and figures shared in a run. */
import { join } from 'node:path';
import type { Mode, Section } from './report.ts';
import type { CleanupScope } from './scope.ts';
import type { SpawnOptions } from './processes.ts';

export interface BenchContext {
  mode: Mode;
  /** Everything the benchmark starts or creates registers its undo here; closed after the benchmark. */
  scope: CleanupScope;
  log(message: string): void;
  /** The count (or any setting) for the current mode. */
  pick<T>(byMode: Record<Mode, T>): T;
  /**
   * A measurement shared by several benchmarks of one run (benchmarks 1 and 2 read the same interleaved
   * RPC rounds): measured on first use, in the scope of the benchmark that asked first.
   */
  shared<T>(key: string, measure: () => Promise<T>): Promise<T>;
  /** A name for broker objects (cloud prefix, queue, Moleculer namespace) unique to this run and use. */
  uniqueName(): string;
  /** Spawn options for an agent: with `--profile`, a CPU profile per agent into the profile folder. */
  agentSpawnOptions(name: string): SpawnOptions;
}

export type SectionBody = Omit<Section, 'id' | 'title' | 'durationMs'>;

export interface Benchmark {
  id: string;
  title: string;
  run(ctx: BenchContext): Promise<SectionBody>;
}

export function profileSpawnOptions(profileDir: string | undefined, name: string): SpawnOptions {
  if (!profileDir) return {};
  return { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, name)}`], stopGraceMs: 15_000 };
}
