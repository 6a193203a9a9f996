/**
 * What a benchmark returns and how the runner writes it: one section per benchmark (a table of rows, the
 * targets it checks, notes), rendered as markdown for people and JSON for tools.
 */

export type Mode = 'full' | 'quick' | 'smoke';

export type TargetStatus = 'met' | 'missed' | 'not measured';

export interface Column {
  key: string;
  label: string;
  /** Decimal places in the markdown table (JSON keeps full precision). */
  digits?: number;
}

export type Cell = number | string | null;

export interface Row {
  /** What was measured, e.g. "agent (routing-direct, pool), c=32". */
  case: string;
  values: Record<string, Cell>;
  /** Set when the row could not be measured (a part that has not landed yet): the reason. */
  pending?: string;
  note?: string;
}

export interface Target {
  /** The target as the issue states it, e.g. "agent RPC p50 ≤ 1.25× raw amqplib (c=1)". */
  text: string;
  measured: number | null;
  limit: number;
  unit: string;
  /** `le`: measured must be ≤ limit; `ge`: ≥ limit. */
  direction: 'le' | 'ge';
  status: TargetStatus;
  /** For a missed target: the cause found, with the evidence (see docs/PERFORMANCE.md for the detail). */
  cause?: string;
}

export interface Section {
  id: string;
  title: string;
  /** What the ratios in this section are relative to. */
  baseline: string;
  columns: Column[];
  rows: Row[];
  targets: Target[];
  notes: string[];
  /** Set when the benchmark failed to run: the error. Its cleanup still ran. */
  error?: string;
  durationMs: number;
  /**
   * Share of all cores busy in the second before the benchmark started, with nothing of the bench running:
   * other work on the machine, which the figures share the CPU with.
   */
  backgroundCpuPct?: number;
}

export interface BenchReport {
  /** Bumped when the JSON shape changes. */
  schema: 1;
  mode: Mode;
  startedAt: string;
  durationMs: number;
  machine: Record<string, string | number>;
  sections: Section[];
  /** Broker objects under the bench prefixes still present after the run (should be none). */
  leftovers?: string[];
}

export function target(text: string, measured: number | null | undefined, limit: number, unit: string, direction: 'le' | 'ge', cause?: string): Target {
  const value = measured === undefined || measured === null || Number.isNaN(measured) ? null : measured;
  const met = value !== null && (direction === 'le' ? value <= limit : value >= limit);
  return {
    text,
    measured: value,
    limit,
    unit,
    direction,
    status: value === null ? 'not measured' : met ? 'met' : 'missed',
    ...(value !== null && !met && cause ? { cause } : {}),
  };
}

export function ratio(value: number | undefined, baseline: number | undefined): number | null {
  if (value === undefined || baseline === undefined || !Number.isFinite(value) || !Number.isFinite(baseline) || baseline === 0) return null;
  return value / baseline;
}

function formatCell(value: Cell | undefined, digits: number | undefined): string {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value)) return '–';
  return value.toFixed(digits ?? (Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2));
}

function formatTargetValue(t: Target): string {
  if (t.measured === null) return '–';
  return `${formatCell(t.measured, t.unit === '×' ? 2 : undefined)}${t.unit === '×' ? '×' : ` ${t.unit}`}`;
}

const escapeCell = (text: string) => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

export function renderTargets(sections: readonly Section[]): string {
  if (!sections.some((s) => s.targets.length > 0)) return 'No targets in the benchmarks run.';
  const lines = ['| # | target | measured | limit | status |', '| --- | --- | --- | --- | --- |'];
  for (const section of sections) {
    for (const t of section.targets) {
      const limit = `${t.direction === 'le' ? '≤' : '≥'} ${t.limit}${t.unit === '×' ? '×' : ` ${t.unit}`}`;
      const status = t.status === 'met' ? '**met**' : t.status === 'missed' ? '**MISSED**' : t.status;
      lines.push(`| ${section.id} | ${escapeCell(t.text)} | ${formatTargetValue(t)} | ${limit} | ${status} |`);
    }
  }
  return lines.join('\n');
}

export function renderSection(section: Section): string {
  const background = section.backgroundCpuPct === undefined ? '' : `; background CPU before it: ${section.backgroundCpuPct.toFixed(0)}% of all cores`;
  const out = [`### ${section.id}. ${section.title}`, '', `Baseline: ${section.baseline}. (${(section.durationMs / 1000).toFixed(1)} s${background})`, ''];
  if (section.error) out.push(`**Failed to run:** ${escapeCell(section.error)}`, '');
  if (section.rows.length > 0) {
    out.push(`| case | ${section.columns.map((c) => c.label).join(' | ')} | note |`);
    out.push(`| --- | ${section.columns.map(() => '---:').join(' | ')} | --- |`);
    for (const row of section.rows) {
      const cells = row.pending ? section.columns.map(() => '–') : section.columns.map((c) => formatCell(row.values[c.key], c.digits));
      const note = row.pending ? `pending: ${row.pending}` : (row.note ?? '');
      out.push(`| ${escapeCell(row.case)} | ${cells.join(' | ')} | ${escapeCell(note)} |`);
    }
    out.push('');
  }
  const missed = section.targets.filter((t) => t.status === 'missed' && t.cause);
  for (const t of missed) out.push(`- Missed — ${t.text}: ${t.cause}`);
  for (const note of section.notes) out.push(`- ${note}`);
  return out.join('\n').trimEnd();
}

export function renderReport(report: BenchReport): string {
  const machine = Object.entries(report.machine)
    .map(([key, value]) => `- ${key}: ${value}`)
    .join('\n');
  const leftovers =
    report.leftovers === undefined ? '' : `\nBroker objects left under bench prefixes after the run: ${report.leftovers.length === 0 ? 'none' : report.leftovers.join(', ')}.\n`;
  return [
    `## Results (${report.mode} run, ${report.startedAt}, ${(report.durationMs / 1000).toFixed(0)} s)`,
    '',
    '### Machine',
    '',
    machine,
    leftovers,
    '### Targets',
    '',
    renderTargets(report.sections),
    '',
    ...report.sections.map((s) => `${renderSection(s)}\n`),
  ].join('\n');
}
