/**
 * Runs the whole benchmark suite with tiny counts (`bench/run.ts --smoke`), so the bench cannot rot: every
 * benchmark starts its processes, measures, cleans up and writes well-formed results. No figure is judged:
 * timing on a shared test machine means nothing, and a missed target is a finding, not a failure.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'node:test';
import type { BenchReport } from '../bench/lib/report.ts';
import { benchmarks } from '../bench/benchmarks.ts';
import { repoRoot, tempDir } from './helpers.ts';
import { isLocalBroker, SHARED_BROKER } from './support/cloud.ts';

const STATUSES = ['met', 'missed', 'not measured'];

test('bench — a smoke run of every benchmark finishes and writes well-formed results', { timeout: 600_000 }, async (t) => {
  const out = await tempDir(t, 'cloudlet-bench-smoke-');
  const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'bench/run.ts'), '--smoke', `--out=${out}`], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', (exitCode) => resolve(exitCode)));
  assert.equal(code, 0, `bench --smoke exited ${code}:\n${output.slice(-6_000)}`);

  const report = JSON.parse(await readFile(join(out, 'latest.json'), 'utf8')) as BenchReport;
  assert.equal(report.schema, 1);
  assert.equal(report.mode, 'smoke');
  assert.ok(Object.keys(report.machine).length > 0, 'the machine is described');
  assert.deepEqual(
    report.sections.map((s) => s.id),
    benchmarks.map((b) => b.id),
  );
  for (const section of report.sections) {
    assert.equal(section.error, undefined, `benchmark ${section.id} failed: ${section.error}`);
    assert.ok(section.baseline.length > 0, `benchmark ${section.id} names its baseline`);
    assert.ok(section.rows.length > 0, `benchmark ${section.id} has rows`);
    const keys = new Set(section.columns.map((c) => c.key));
    for (const row of section.rows) {
      assert.equal(typeof row.case, 'string');
      if (row.pending !== undefined) {
        assert.ok(row.pending.length > 0, `${section.id}: "${row.case}" says why it is pending`);
        continue;
      }
      for (const [key, value] of Object.entries(row.values)) {
        assert.ok(keys.has(key), `${section.id}: "${row.case}" has a value for an unknown column ${key}`);
        assert.ok(value === null || typeof value === 'string' || Number.isFinite(value), `${section.id}: "${row.case}".${key} = ${value}`);
      }
      // Every measured row has its first figure.
      const first = section.columns[0]?.key;
      assert.ok(first !== undefined && typeof row.values[first] === 'number', `${section.id}: "${row.case}" has no ${first}`);
    }
    for (const target of section.targets) {
      assert.ok(STATUSES.includes(target.status), `${section.id}: target status ${target.status}`);
      assert.ok(target.status !== 'not measured', `${section.id}: "${target.text}" was not measured`);
    }
  }
  // Each benchmark deletes what it made on the broker. rabbitmqctl reaches only a local broker; for the one
  // setup.sh starts there is always an answer.
  if (isLocalBroker(SHARED_BROKER)) assert.deepEqual(report.leftovers, []);

  const markdown = await readFile(join(out, 'latest.md'), 'utf8');
  assert.match(markdown, /### Targets/);
  for (const section of report.sections) assert.ok(markdown.includes(`### ${section.id}. ${section.title}`), `the table has section ${section.id}`);
});
