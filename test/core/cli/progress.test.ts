/** Progress display: redrawn in place on a terminal, one line per stage elsewhere, silent with --json. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { makeProgress, makeRequest } from '../../../core/envelope.ts';
import { createProgress } from '../../../core/cli/progress.ts';

function fakeStream(isTTY: boolean) {
  const chunks: string[] = [];
  return { stream: { isTTY, write: (chunk: string) => chunks.push(chunk) > 0 } as unknown as NodeJS.WriteStream, text: () => chunks.join('') };
}

const request = makeRequest({ type: 'create-vm', payload: {} });
const stage = (name: string, detail?: Record<string, unknown>) => makeProgress(request, 'node1', name, detail);

test('progress — on a terminal one line is redrawn with every stage so far, and ends with the summary', () => {
  const { stream, text } = fakeStream(true);
  const progress = createProgress({ title: 'vm create tiny', json: false, stream, tickMs: 60_000 });
  for (const name of ['accepted', 'allocating', 'alive', 'starting', 'running', 'waiting-for-ip']) progress.onProgress(stage(name));
  progress.stage('10.77.0.23', 'node1');
  progress.finish('✓ created node1.abcdefgh');
  const output = text();
  const frames = output.split('\r\x1b[2K').filter(Boolean);
  assert.match(frames.at(-2) ?? '', /^. vm create tiny on node1: allocating → starting → running → waiting for IP → 10\.77\.0\.23 \(\d+\.\d s\)$/);
  assert.match(frames.at(-1) ?? '', /^✓ created node1\.abcdefgh \(\d+\.\d s\)\n$/);
  assert.doesNotMatch(output, /alive|accepted/);
  progress.finish('twice');
  assert.equal(text(), output, 'finish is idempotent');
});

test('progress — elsewhere one plain line per stage; with --json nothing at all', () => {
  const plain = fakeStream(false);
  const progress = createProgress({ title: 'vm stop', json: false, stream: plain.stream });
  progress.onProgress(stage('alive'));
  progress.onProgress(stage('stopping', { vm: 'node1.abcdefgh' }));
  progress.stage('confirming stopped', 'node1');
  progress.finish('done');
  assert.equal(plain.text(), '… node1: stopping {"vm":"node1.abcdefgh"}\n… node1: confirming stopped\n');
  const quiet = fakeStream(true);
  const silent = createProgress({ title: 'x', json: true, stream: quiet.stream });
  silent.onProgress(stage('allocating'));
  silent.finish('done');
  assert.equal(quiet.text(), '');
});
