/**
 * PLUGINS.md section 10, checked on the built-in plugins and the worker code: what runs in worker threads
 * must run under Deno 2 too, so no CommonJS globals, and Node's globals only through `node:` imports.
 * A static check: it reads the sources, it does not run them (worker-under-deno.test.ts does that).
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import test from 'node:test';
import { repoRoot } from '../helpers.ts';

async function sourcesUnder(folder: string): Promise<string[]> {
  const entries = await readdir(join(repoRoot, folder), { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile() && /\.(ts|mts|js|mjs)$/.test(entry.name)).map((entry) => join(entry.parentPath ?? (entry as { path?: string }).path ?? "", entry.name));
}

/** Source without comments and string contents, so prose about `require` does not count. */
function codeOf(source: string): string {
  return source
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/(^|[^:\\])\/\/.*$/gm, '$1')
    .replace(/'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"/g, "''");
}

const importsFrom = (source: string, module: string) => new RegExp(`from\\s+['"]${module}['"]`).test(source);

/** What breaks the rules in one file (empty when it keeps them). */
export function runtimeRuleProblems(source: string): string[] {
  const code = codeOf(source);
  const problems: string[] = [];
  for (const [pattern, what] of [
    [/\brequire\s*\(/, 'require()'],
    [/\b__dirname\b/, '__dirname'],
    [/\b__filename\b/, '__filename'],
    [/\bmodule\.exports\b|\bexports\.\w+\s*=/, 'CommonJS exports'],
  ] as const) {
    if (pattern.test(code)) problems.push(`uses ${what}`);
  }
  // A local binding named `process` (a scanned QEMU process, say) is not the global.
  const bindsProcess = /\b(?:const|let|var)\s+process\b|[(,]\s*process\s*[,):=]/.test(code);
  if (/\bprocess\.\w+/.test(code) && !bindsProcess && !importsFrom(source, 'node:process')) problems.push("uses the global process without importing it from 'node:process'");
  if (/\bBuffer\.\w+|\bnew Buffer\b/.test(code) && !importsFrom(source, 'node:buffer')) problems.push("uses the global Buffer without importing it from 'node:buffer'");
  return problems;
}

test('runtime rules — the check itself: it finds each kind of break and passes clean code', () => {
  assert.deepEqual(runtimeRuleProblems("const x = require('fs');"), ['uses require()']);
  assert.deepEqual(runtimeRuleProblems('const here = __dirname;'), ['uses __dirname']);
  assert.deepEqual(runtimeRuleProblems('const pid = process.pid;'), ["uses the global process without importing it from 'node:process'"]);
  assert.deepEqual(runtimeRuleProblems("import process from 'node:process';\nconst pid = process.pid;"), []);
  assert.deepEqual(runtimeRuleProblems('for (const process of scan) use(process.pid);'), []);
  assert.deepEqual(runtimeRuleProblems("const b = Buffer.from('x');"), ["uses the global Buffer without importing it from 'node:buffer'"]);
  assert.deepEqual(runtimeRuleProblems('// require() is not used here\nconst a = 1;'), []);
});

test('runtime rules — workers and built-in plugins use no CommonJS globals, and Node globals only through node: imports', async () => {
  const problems: string[] = [];
  for (const folder of ['workers', 'plugins']) {
    for (const file of await sourcesUnder(folder)) {
      for (const problem of runtimeRuleProblems(await readFile(file, 'utf8'))) problems.push(`${relative(repoRoot, file)}: ${problem}`);
    }
  }
  assert.deepEqual(problems, []);
});
