/**
 * `npm run bench`: runs every benchmark on this machine and writes the table (markdown and JSON) to
 * bench/results/latest.{md,json}; a full run also copies it into docs/PERFORMANCE.md.
 *
 *   npm run bench                    full run (a few minutes on 2 cores)
 *   npm run bench -- --quick         fewer rounds and calls (about a minute)
 *   npm run bench -- --smoke         tiny counts: checks the bench runs, figures mean nothing (npm test)
 *   npm run bench -- --only=1,2      some benchmarks
 *   npm run bench -- --out=DIR       write the results elsewhere (never touches docs/)
 *   npm run bench -- --profile       agents write CPU profiles to bench/results/profiles/
 *   npm run bench -- --from-source   agents run the TypeScript sources through tsx instead of the
 *                                    compiled dist/ that `npm pack` ships (built first by this command)
 *
 * Exit code 1 when a benchmark failed to run; a missed target is a finding, not a failure.
 */
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { benchmarks } from './benchmarks.ts';
import { BROKER_URL } from './lib/cloud.ts';
import { profileSpawnOptions, type BenchContext } from './lib/context.ts';
import { busyCpuShare, describeMachine } from './lib/machine.ts';
import { agentRoot } from './lib/processes.ts';
import { renderReport, type BenchReport, type Mode, type Section } from './lib/report.ts';
import { CleanupScope } from './lib/scope.ts';

const benchDir = fileURLToPath(new URL('.', import.meta.url));
const defaultOut = join(benchDir, 'results');
const docsFile = fileURLToPath(new URL('../docs/PERFORMANCE.md', import.meta.url));
const DOCS_START = '<!-- bench:results:start -->';
const DOCS_END = '<!-- bench:results:end -->';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    smoke: { type: 'boolean', default: false },
    only: { type: 'string' },
    out: { type: 'string' },
    'no-docs': { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'from-source': { type: 'boolean', default: false },
  },
});
const mode: Mode = args.smoke ? 'smoke' : args.quick ? 'quick' : 'full';
const outDir = args.out ?? defaultOut;
const only = args.only ? new Set(args.only.split(',').map((s) => s.trim())) : undefined;
const selected = benchmarks.filter((b) => !only || only.has(b.id));
const profileDir = args.profile ? join(outDir, 'profiles', new Date().toISOString().replace(/[:.]/g, '-')) : undefined;
/** A benchmark that runs longer than this is stopped (and cleaned up) and reported as failed. */
const BENCHMARK_TIMEOUT_MS = { full: 240_000, quick: 150_000, smoke: 120_000 }[mode];

const log = (message: string) => process.stderr.write(`[bench] ${message}\n`);

let currentScope: CleanupScope | undefined;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: cleaning up`);
    void (currentScope?.close() ?? Promise.resolve()).finally(() => process.exit(130));
  });
}

/** Every broker object of this run is named `bench-<runToken>-…`, so leftovers are told apart from other runs'. */
const runToken = randomUUID().slice(0, 6);
let nameCounter = 0;

async function runOne(benchmark: (typeof benchmarks)[number], shared: Map<string, Promise<unknown>>): Promise<Section> {
  const scope = new CleanupScope();
  currentScope = scope;
  const ctx: BenchContext = {
    mode,
    scope,
    log: (message) => log(`${benchmark.id}: ${message}`),
    pick: (byMode) => byMode[mode],
    shared: <T>(key: string, measure: () => Promise<T>) => {
      if (!shared.has(key)) shared.set(key, measure());
      return shared.get(key) as Promise<T>;
    },
    agentSpawnOptions: (name) => profileSpawnOptions(profileDir, name),
    uniqueName: () => `bench-${runToken}-${(nameCounter++).toString(36)}${randomUUID().slice(0, 4)}`,
  };
  const section: Section = { id: benchmark.id, title: benchmark.title, baseline: '', columns: [], rows: [], targets: [], notes: [], durationMs: 0 };
  // A second of nothing running, to tell how busy the machine is anyway (skipped in a smoke run).
  if (mode !== 'smoke') section.backgroundCpuPct = (await busyCpuShare()) * 100;
  let timer: NodeJS.Timeout | undefined;
  const started = performance.now();
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`did not finish within ${BENCHMARK_TIMEOUT_MS / 1000} s`)), BENCHMARK_TIMEOUT_MS);
    });
    Object.assign(section, await Promise.race([benchmark.run(ctx), timeout]));
  } catch (error) {
    section.error = (error as Error).stack ?? String(error);
    log(`${benchmark.id} failed: ${section.error}`);
  } finally {
    clearTimeout(timer);
    const cleanupErrors = await scope.close();
    for (const error of cleanupErrors) section.notes.push(`cleanup problem: ${error.message}`);
    currentScope = undefined;
  }
  section.durationMs = performance.now() - started;
  return section;
}

/** Queues and exchanges named after this run's prefixes that are still on the broker (local broker only). */
function brokerLeftovers(prefixes: readonly string[]): string[] | undefined {
  if (prefixes.length === 0 || !['127.0.0.1', 'localhost'].includes(new URL(BROKER_URL).hostname)) return undefined;
  const names: string[] = [];
  for (const what of ['list_queues', 'list_exchanges']) {
    const result = spawnSync('rabbitmqctl', ['-q', what, '--no-table-headers', 'name'], { encoding: 'utf8', timeout: 30_000 });
    if (result.status !== 0) return undefined;
    names.push(...result.stdout.split('\n').map((line) => line.trim()));
  }
  return names.filter((name) => prefixes.some((prefix) => name.startsWith(prefix) || name.startsWith(`MOL-${prefix}`)));
}

async function updateDocs(markdown: string): Promise<void> {
  const current = await readFile(docsFile, 'utf8');
  const start = current.indexOf(DOCS_START);
  const end = current.indexOf(DOCS_END);
  if (start === -1 || end === -1) throw new Error(`${docsFile} has no ${DOCS_START} … ${DOCS_END} block to replace`);
  await writeFile(docsFile, `${current.slice(0, start + DOCS_START.length)}\n${markdown.trim()}\n${current.slice(end)}`);
}

/**
 * Agents run as they are installed: `npm pack` ships dist/ (scripts/build.mjs) and bin.js runs it. So the
 * bench builds it first in the agents' tree. A smoke run (npm test) and --from-source run the sources.
 */
function prepareAgentCode(): string {
  if (mode === 'smoke' || args['from-source']) {
    process.env.CLOUDLET_FROM_SOURCE = '1';
    return 'TypeScript sources through tsx (--from-source or smoke run)';
  }
  delete process.env.CLOUDLET_FROM_SOURCE;
  const build = spawnSync(process.execPath, [join(agentRoot, 'scripts/build.mjs')], { cwd: agentRoot, encoding: 'utf8' });
  if (build.status !== 0) throw new Error(`npm run build failed in ${agentRoot}:\n${build.stdout}${build.stderr}`);
  return 'compiled JavaScript in dist/ (scripts/build.mjs, as `npm pack` ships it; built at the start of the run)';
}

const runStarted = new Date();
log(`${mode} run of benchmark(s) ${selected.map((b) => b.id).join(', ')}; results to ${outDir}`);
const agentCode = prepareAgentCode();
const machine = { ...(await describeMachine(BROKER_URL, mode === 'smoke' ? 200 : 1_000)), 'agents run': agentCode };
const shared = new Map<string, Promise<unknown>>();
const sections: Section[] = [];
for (const benchmark of selected) {
  log(`${benchmark.id}. ${benchmark.title}`);
  sections.push(await runOne(benchmark, shared));
}
const report: BenchReport = {
  schema: 1,
  mode,
  startedAt: runStarted.toISOString(),
  durationMs: Date.now() - runStarted.getTime(),
  machine,
  sections,
};
const leftovers = brokerLeftovers([`bench-${runToken}-`]);
if (leftovers) report.leftovers = leftovers;
const markdown = renderReport(report);
await mkdir(outDir, { recursive: true });
await writeFile(join(outDir, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
await writeFile(join(outDir, 'latest.md'), `${markdown}\n`);
if (mode === 'full' && !args.out && !args['no-docs'] && !only) await updateDocs(markdown);
process.stdout.write(`${markdown}\n`);
log(`done in ${(report.durationMs / 1000).toFixed(0)} s; ${join(outDir, 'latest.md')}${profileDir ? `; profiles in ${profileDir}` : ''}`);
process.exit(sections.some((s) => s.error) ? 1 : 0);
