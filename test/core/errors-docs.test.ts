/** Keeps docs/ERRORS.md and the error catalogue in step: one row per code, and the same `retryable`. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import test from 'node:test';
import { errorCatalogue } from '../../core/errors.ts';

const ERRORS_DOC = new URL('../../docs/ERRORS.md', import.meta.url);
const HEADER = /^\|\s*Code\s*\|\s*Retryable\s*\|\s*Meaning\s*\|\s*What to do\s*\|\s*$/;
const SEPARATOR = /^\|(?:\s*:?-{3,}:?\s*\|)+\s*$/;

interface DocRow {
  line: number;
  code: string;
  retryable: string;
}

/** The rows of the first `Code | Retryable | Meaning | What to do` table under the given heading. */
async function readCatalogueTable(heading = '## Core codes'): Promise<DocRow[]> {
  const lines = (await readFile(ERRORS_DOC, 'utf8')).split('\n');
  const headingLine = lines.findIndex((line) => line.trim() === heading);
  assert.ok(headingLine >= 0, `docs/ERRORS.md has no "${heading}" heading`);
  const header = lines.findIndex((line, index) => index > headingLine && HEADER.test(line.trim()));
  assert.ok(header > headingLine, `no "Code | Retryable | Meaning | What to do" table under "${heading}"`);
  const start = header + 1;
  assert.match(lines[start]?.trim() ?? '', SEPARATOR, 'the table header must be followed by a |---| separator row');

  const rows: DocRow[] = [];
  for (let index = start + 1; index < lines.length; index++) {
    const line = (lines[index] as string).trim();
    if (!line.startsWith('|')) break;
    // Cells are split on pipes that are not escaped as `\|`.
    const cells = line.split(/(?<!\\)\|/).slice(1, -1).map((cell) => cell.trim());
    assert.equal(cells.length, 4, `docs/ERRORS.md line ${index + 1}: expected 4 cells, found ${cells.length}`);
    rows.push({ line: index + 1, code: (cells[0] as string).replace(/`/g, ''), retryable: cells[1] as string });
  }
  assert.ok(rows.length > 0, 'the error table in docs/ERRORS.md has no rows');
  return rows;
}

const catalogueCodes = Object.keys(errorCatalogue) as (keyof typeof errorCatalogue)[];

test('errors — docs list every catalogue code', async () => {
  const rows = await readCatalogueTable();
  const missing = catalogueCodes.filter((code) => !rows.some((row) => row.code === code));
  assert.deepEqual(missing, [], `add a row to docs/ERRORS.md for: ${missing.join(', ')}`);
});

test('errors — docs list each code exactly once', async () => {
  const rows = await readCatalogueTable();
  const repeated = catalogueCodes.filter((code) => rows.filter((row) => row.code === code).length > 1);
  assert.deepEqual(repeated, [], `codes with more than one row in docs/ERRORS.md: ${repeated.join(', ')}`);
});

test('errors — docs list no code that is missing from the catalogue', async () => {
  const rows = await readCatalogueTable();
  const unknown = rows.filter((row) => !Object.hasOwn(errorCatalogue, row.code)).map((row) => `${row.code} (line ${row.line})`);
  assert.deepEqual(unknown, [], `rows in docs/ERRORS.md for codes not in core/errors.ts: ${unknown.join(', ')}`);
});

test('errors — docs retryable column matches the catalogue', async () => {
  const rows = await readCatalogueTable();
  const wrong: string[] = [];
  for (const row of rows) {
    assert.ok(row.retryable === 'yes' || row.retryable === 'no', `docs/ERRORS.md line ${row.line}: Retryable must be "yes" or "no", found "${row.retryable}"`);
    const spec = (errorCatalogue as Record<string, { retryable: boolean }>)[row.code];
    if (spec && spec.retryable !== (row.retryable === 'yes')) wrong.push(`${row.code}: docs say ${row.retryable}, catalogue says ${spec.retryable ? 'yes' : 'no'}`);
  }
  assert.deepEqual(wrong, []);
});

/** Each plugin that declares error codes has a table of its own, checked the same way as the core's. */
const PLUGIN_TABLES: { heading: string; codes: () => Promise<Record<string, { retryable: boolean }>> }[] = [
  { heading: '### qemu-backend', codes: async () => (await import('../../plugins/qemu-backend/errors.ts')).qemuErrors },
  { heading: '### ip-discovery-dnsmasq', codes: async () => (await import('../../plugins/ip-discovery-dnsmasq/errors.ts')).dnsmasqErrors },
  { heading: '### ip-discovery-arp', codes: async () => (await import('../../plugins/ip-discovery-arp/errors.ts')).arpErrors },
  { heading: '### sweeper', codes: async () => (await import('../../plugins/sweeper/errors.ts')).sweeperErrors },
  { heading: '### metrics', codes: async () => (await import('../../plugins/metrics/index.ts')).default.errors ?? {} },
];

for (const table of PLUGIN_TABLES) {
  test(`errors — docs list every ${table.heading.slice(4)} code with its retryable flag`, async () => {
    const rows = await readCatalogueTable(table.heading);
    assert.deepEqual(
      rows.map((row) => [row.code, row.retryable]).sort(),
      Object.entries(await table.codes())
        .map(([code, spec]) => [code, spec.retryable ? 'yes' : 'no'])
        .sort(),
    );
  });
}
