/**
 * The lock that keeps two agents on one machine from sharing a folder of lasting state (core/folder-lock.ts).
 * Holders here are this process (as an agent's plugin would hold it) and child processes of other users.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import test from 'node:test';
import { folderLockName, identifyFolder, lockFolder, onHeldFolder, parseHolder, type FolderHolderState, type FolderLockOptions } from '../../core/folder-lock.ts';
import { askLockHolder, LockWaitCalledOff } from '../../core/abstract-lock.ts';
import { tempDir, until } from '../helpers.ts';

function holder(host: string, state: { current: FolderHolderState }, extra: Partial<FolderLockOptions> = {}): FolderLockOptions {
  return { host, plugin: 'qemu-backend', setting: 'stateDir', state: () => state.current, stoppingWaitMs: 0, ...extra };
}

test('folder lock — a second holder is refused at once, naming the first; by any path to the folder, a bind mount too; free again once released', { timeout: 30_000 }, async (t) => {
  const dir = await tempDir(t);
  const folder = join(dir, 'state');
  await mkdir(folder);
  await symlink(folder, join(dir, 'link'));
  // Another way in that no path resolution finds: a bind mount (the lock goes by device and inode).
  const bound = join(dir, 'bound');
  await mkdir(bound);
  execFileSync('mount', ['--bind', folder, bound]);
  try {
    await refusedByAnyPath(t, dir, folder, bound);
  } finally {
    // Here, not in t.after: the temp folder's removal (registered first) must not meet a mount inside it.
    execFileSync('umount', [bound]);
  }
});

async function refusedByAnyPath(t: test.TestContext, dir: string, folder: string, bound: string): Promise<void> {
  const first = await lockFolder(folder, holder('a', { current: 'running' }));
  t.after(() => first.release());
  assert.equal(first.held, true);

  // A running holder is not waited for (only a stopping one is): a wait of stoppingWaitMs (60 s) would
  // outlast the test's timeout (30 s).
  for (const path of [folder, join(dir, 'link'), join(dir, 'state', '..', 'state'), bound]) {
    const asked = (await identifyFolder(path)).folder; // the message names the folder as this start reaches it
    await assert.rejects(lockFolder(path, holder('b', { current: 'starting' }, { stoppingWaitMs: 60_000 })), (error: { code?: string; message: string; details?: Record<string, unknown> }) => {
      assert.equal(error.code, 'FOLDER_IN_USE');
      assert.equal(
        error.message,
        `${asked} is in use by the agent of host "a" (process ${process.pid}, plugin "qemu-backend", running); two agents must not share it: stop the other agent, or give each its own stateDir (plugin "qemu-backend")`,
      );
      assert.deepEqual(error.details, { folder: asked, plugin: 'qemu-backend', holderPid: process.pid, holderHost: 'a', holderPlugin: 'qemu-backend', holderState: 'running' });
      return true;
    });
  }
  await first.release();
  const second = await lockFolder(join(dir, 'link'), holder('b', { current: 'starting' }));
  assert.equal(second.held, true);
  await second.release();
}

test('folder lock — a holder that says it is stopping is waited for up to stoppingWaitMs, then refused', { timeout: 30_000 }, async (t) => {
  const folder = await tempDir(t);
  const state = { current: 'running' as FolderHolderState };
  const old = await lockFolder(folder, holder('a', state));
  t.after(() => old.release());
  state.current = 'stopping';

  const said: string[] = [];
  await assert.rejects(lockFolder(folder, holder('a', { current: 'starting' }, { stoppingWaitMs: 300, onWaiting: (m) => said.push(m) })), (error: { code?: string; message: string }) => {
    assert.equal(error.code, 'FOLDER_IN_USE');
    assert.match(error.message, /in use by the agent of host "a" \(process \d+, plugin "qemu-backend", still stopping after the wait\)/);
    return true;
  });
  assert.deepEqual(said, [`the agent of host "a" (process ${process.pid}) is stopping and still holds ${old.folder}; waiting up to 0.3 s for it to finish`]);

  let settled = false;
  const patient = lockFolder(folder, holder('a', { current: 'starting' }, { stoppingWaitMs: 60_000 })).finally(() => (settled = true));
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(settled, false, 'took the folder while its holder was still stopping');
  await old.release();
  const taken = await patient;
  assert.equal(taken.held, true);
  await taken.release();
});

test('folder lock — a wait for a stopping holder ends when its signal aborts (LockWaitCalledOff, naming the holder); nothing is taken', { timeout: 30_000 }, async (t) => {
  const folder = await tempDir(t);
  const old = await lockFolder(folder, holder('a', { current: 'stopping' }));
  t.after(() => old.release());
  const callOff = new AbortController();
  const said: string[] = [];
  const waiting = lockFolder(folder, holder('b', { current: 'starting' }, { stoppingWaitMs: 60_000, signal: callOff.signal, onWaiting: (m) => said.push(m) }));
  await until(() => said.length > 0, 10_000);
  callOff.abort();
  await assert.rejects(waiting, (error: unknown) => {
    assert.ok(error instanceof LockWaitCalledOff, String(error));
    assert.equal(error.waitingFor, `the agent of host "a" (process ${process.pid}) to stop and release ${old.folder}`);
    return true;
  });
  // Still the old holder's: a start that is not called off waits for it again.
  assert.equal((await askLockHolder(folderLockName(old.key)))?.includes('"host":"a"'), true);
  // A signal aborted before the start is called off at its first wait, and only then: a free folder is taken.
  await assert.rejects(lockFolder(folder, holder('b', { current: 'starting' }, { stoppingWaitMs: 60_000, signal: AbortSignal.abort() })), LockWaitCalledOff);
  await old.release();
  const free = await lockFolder(folder, holder('b', { current: 'starting' }, { signal: AbortSignal.abort() }));
  assert.equal(free.held, true);
  await free.release();
});

/** A script that holds a folder's lock saying `stopping` (`hold`), or takes it, saying when it waits, and prints the outcome (`take`). */
async function lockScript(dir: string): Promise<string> {
  const script = join(dir, 'lock.mts');
  await writeFile(
    script,
    `import { lockFolder } from ${JSON.stringify(new URL('../../core/folder-lock.ts', import.meta.url).pathname)};
const [mode, folder, host] = process.argv.slice(2);
if (mode === 'hold') {
  await lockFolder(folder, { host, plugin: 'qemu-backend', state: () => 'stopping', stoppingWaitMs: 0 });
  console.log('held');
  setInterval(() => undefined, 1_000);
} else {
  console.log('taking');
  const outcome = await lockFolder(folder, { host, plugin: 'qemu-backend', state: () => 'starting', stoppingWaitMs: 60_000, onWaiting: () => console.log('waiting') }).then(
    (lock) => ({ held: lock.held }),
    (error) => ({ code: error.code, message: error.message }),
  );
  console.log(JSON.stringify(outcome));
  process.exit(0);
}
`,
  );
  return script;
}

function child(t: test.TestContext, script: string, args: string[]): { process: ReturnType<typeof spawn>; lines: string[]; next: () => Promise<string> } {
  const started = spawn(process.execPath, ['--import', 'tsx', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => started.kill('SIGKILL'));
  const lines: string[] = [];
  let buffered = '';
  started.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    lines.push(...parts);
  });
  let read = 0;
  return { process: started, lines, next: async () => (await until(() => lines.length > read, 20_000, 'a line from the child'), lines[read++] as string) };
}

test('folder lock — the wait for a stopping holder outlasts a moment when it does not answer (paused, loaded)', { timeout: 30_000 }, async (t) => {
  // Before, every round asked the holder again, and one unanswered probe ended the wait with FOLDER_IN_USE
  // "does not say what it is doing" while the old agent was still draining.
  const folder = await tempDir(t);
  const old = child(t, await lockScript(folder), ['hold', folder, 'old']);
  assert.equal(await old.next(), 'held');

  const said: string[] = [];
  let settled = false;
  const taking = lockFolder(folder, holder('new', { current: 'starting' }, { stoppingWaitMs: 60_000, onWaiting: (m: string) => said.push(m) })).finally(() => (settled = true));
  await until(() => said.length === 1, 5_000, 'the start says it waits');
  old.process.kill('SIGSTOP'); // its probes go unanswered now
  await new Promise((resolve) => setTimeout(resolve, 2_500));
  assert.equal(settled, false, 'gave up while the holder was paused');
  old.process.kill('SIGCONT');
  old.process.kill('SIGTERM'); // the old agent finishes stopping: its process ends, the kernel frees the name
  const taken = await taking;
  assert.equal(taken.held, true);
  await taken.release();
});

test('folder lock — a start waiting for a stopping holder is refused by the one that took the lock after it, and names that one', { timeout: 30_000 }, async (t) => {
  // Before, the holder was not asked again once it had said "stopping": the start waited out stoppingWaitMs
  // (minutes, in an agent), then named the old holder.
  const folder = await tempDir(t);
  const script = await lockScript(folder);
  const old = child(t, script, ['hold', folder, 'old']);
  assert.equal(await old.next(), 'held');
  const waiting = child(t, script, ['take', folder, 'waiting']);
  assert.equal(await waiting.next(), 'taking');
  assert.equal(await waiting.next(), 'waiting', 'it has heard "stopping" and waits');
  waiting.process.kill('SIGSTOP'); // so that the third start is surely first
  old.process.kill('SIGKILL');
  await until(async () => {
    const third = await lockFolder(folder, holder('third', { current: 'running' })).catch(() => undefined);
    if (third) t.after(() => third.release());
    return third !== undefined;
  }, 10_000, 'the third start to take the freed lock');
  waiting.process.kill('SIGCONT');
  const outcome = JSON.parse(await waiting.next()) as { code?: string; message?: string };
  assert.equal(outcome.code, 'FOLDER_IN_USE', JSON.stringify(outcome));
  assert.match(String(outcome.message), new RegExp(`in use by the agent of host "third" \\(process ${process.pid}, plugin "qemu-backend", running\\)`));
});

/** A child process of `uid` that listens on the lock's name and says nothing; resolves once it listens. */
async function squat(t: test.TestContext, name: string, uid: number): Promise<number> {
  const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(name)}, () => console.log('up'))`], {
    stdio: ['ignore', 'pipe', 'inherit'],
    uid,
    gid: uid,
  });
  t.after(() => child.kill('SIGKILL'));
  await new Promise((resolve) => child.stdout?.once('data', resolve));
  return child.pid as number;
}

test('folder lock — a name squatted by another user is gone around (said in a warning); one of this user\'s processes is not', { timeout: 30_000 }, async (t) => {
  const folder = await tempDir(t);
  const name = folderLockName((await identifyFolder(folder)).key);
  const squatter = await squat(t, name, 65534);
  const warnings: string[] = [];
  const around = await lockFolder(folder, holder('a', { current: 'starting' }, { onUnavailable: (m) => warnings.push(m) }));
  assert.equal(around.held, false);
  assert.deepEqual(warnings, [`the lock on ${around.folder} is held by process ${squatter} of uid 65534, which is not a cloudlet agent of this user; going on without it`]);

  const other = await tempDir(t);
  const own = await squat(t, folderLockName((await identifyFolder(other)).key), process.getuid?.() ?? 0);
  await assert.rejects(lockFolder(other, holder('a', { current: 'starting' })), (error: { code?: string; message: string }) => {
    assert.equal(error.code, 'FOLDER_IN_USE');
    assert.match(error.message, new RegExp(`is in use by process ${own}, which does not say what it is doing; two agents must not share it`));
    return true;
  });
});

test('folder lock — a folder that does not exist is named, not locked', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(lockFolder(join(dir, 'nope'), holder('a', { current: 'starting' })), { message: `cannot hold ${join(dir, 'nope')}: it does not exist (create it before holding it)` });
});

test('folder lock — pure parts: what a holder says, and whom a start may go around', () => {
  assert.deepEqual(parseHolder('{"state":"running","host":"a","plugin":"p","pid":7}'), { state: 'running', host: 'a', plugin: 'p', pid: 7 });
  for (const line of [undefined, '', 'running', '{"state":"dancing","host":"a","plugin":"p","pid":7}', '{"state":"running","host":1,"plugin":"p","pid":7}', '[]', 'null']) {
    assert.equal(parseHolder(line), undefined, String(line));
  }
  const options = { plugin: 'qemu-backend', setting: 'stateDir' };
  const hidden = onHeldFolder('/s', { uninspectedOwn: [41, 42] }, undefined, 1000, options);
  assert.match(String(hidden.refuse), /^\/s is locked, and cloudlet agents 41, 42 of this user could not be looked into/);
  assert.deepEqual(hidden.details, { uninspectedPids: [41, 42] });
  assert.deepEqual(onHeldFolder('/s', { holder: { pid: 9, uid: 65534 }, uninspectedOwn: [] }, undefined, 0, options), { holder: 'process 9 of uid 65534' });
  assert.deepEqual(onHeldFolder('/s', { uninspectedOwn: [] }, undefined, 1000, options), { holder: 'a process this user cannot see' });
  assert.match(String(onHeldFolder('/s', { holder: { pid: 9, uid: 0 }, uninspectedOwn: [] }, undefined, 0, { plugin: 'x' }).refuse), /give each its own folder$/);
});
