#!/usr/bin/env node
// `npm test`: makes sure the system parts the tests need are present (scripts/setup.sh --check-only is
// quick when they are), then runs every test/**/*.test.ts with Node's test runner under tsx.
// Extra arguments are passed to the runner (e.g. `npm test -- --test-name-pattern=pools`); file paths
// given as arguments limit the run to those files.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const args = process.argv.slice(2);
const files = args.filter((a) => a.endsWith('.test.ts'));
const runnerArgs = args.filter((a) => !a.endsWith('.test.ts'));

if (process.env.CLOUDLET_SKIP_SETUP !== '1') {
  const setup = spawnSync('bash', [join(root, 'scripts/setup.sh'), '--for-tests'], { stdio: 'inherit', cwd: root });
  if (setup.status !== 0) {
    console.error(`setup failed (exit ${setup.status}); see the lines above for what is missing`);
    process.exit(setup.status ?? 1);
  }
}

function findTests(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'fixtures' ? [] : findTests(path);
    return name.endsWith('.test.ts') ? [relative(root, path)] : [];
  });
}

const selected = files.length > 0 ? files : findTests(join(root, 'test')).sort();
// The host's own cloudlet folders (the defaults for root): a test that makes one has run something with a
// default it should have pointed at its temp folder, and left it behind on the machine. Those that existed
// before the run (a host that runs cloudlet for real) are not judged.
const HOST_FOLDERS = ['/etc/cloudlet', '/var/lib/cloudlet', '/run/cloudlet', '/etc/systemd/system/cloudlet.service'];
const hostFoldersBefore = new Set(HOST_FOLDERS.filter((path) => existsSync(path)));
const result = spawnSync(
  process.execPath,
  // A default per-test timeout, so a regression that hangs fails its test instead of the whole run (tests
  // that need longer say so with their own { timeout }).
  ['--import', 'tsx', '--test', '--test-reporter=spec', `--test-concurrency=${process.env.CLOUDLET_TEST_CONCURRENCY ?? 2}`, '--test-timeout=300000', ...runnerArgs, ...selected],
  // The tests run the TypeScript sources even where a dist/ was built; test/e2e/compiled.test.ts builds and
  // runs the compiled form in a copy of its own.
  { stdio: 'inherit', cwd: root, env: { ...process.env, CLOUDLET_FROM_SOURCE: '1' } },
);
const madeByTests = HOST_FOLDERS.filter((path) => !hostFoldersBefore.has(path) && existsSync(path));
if (madeByTests.length > 0) {
  console.error(`\nthe tests left ${madeByTests.join(', ')} on this machine: a test ran cloudlet with a default path instead of its temp folder (find it by running the files one at a time); remove ${madeByTests.length > 1 ? 'them' : 'it'} before the next run`);
  process.exit(result.status || 1);
}
process.exit(result.status ?? 1);
