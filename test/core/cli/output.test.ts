/** The CLI's error output: wire data from any host is shown, never trusted to have the shape it should. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { CloudletError } from '../../../core/errors.ts';
import { createOutput } from '../../../core/cli/output.ts';

function capture() {
  const chunks: string[] = [];
  return { stream: { write: (chunk: string) => chunks.push(chunk) > 0 } as unknown as NodeJS.WritableStream, text: () => chunks.join('') };
}

function printed(details: unknown): string {
  const stdout = capture();
  const stderr = capture();
  createOutput(false, { stdout: stdout.stream, stderr: stderr.stream }).error(CloudletError.fromWire({ code: 'CONFIG_INVALID', message: 'the host says no', details }), 'node1');
  assert.equal(stdout.text(), '');
  return stderr.text();
}

test('output — an error reply whose details.problems is not a list of problems prints its message and details, not a crash', () => {
  // Before, output.ts took details.problems as ConfigProblem[]: a host replying problems: "x" or [null]
  // made the CLI crash with a stack trace (problems.map is not a function / cannot read null).
  for (const problems of ['x', 42, { code: 'A' }, [null], [1, 2], [{ code: 'A', file: 'f', path: 'p' }], [{ code: 1, file: 'f', path: 'p', message: 'm' }]]) {
    const text = printed({ problems });
    assert.match(text, /^error \[CONFIG_INVALID\] from node1: the host says no\n/, JSON.stringify(problems));
    assert.ok(text.includes(`details: ${JSON.stringify({ problems })}`), text);
  }
});

test('output — well-formed problems are still listed one by one', () => {
  const text = printed({ problems: [{ code: 'CONFIG_INVALID', file: 'c.yaml', path: 'state.dir', message: 'wrong type', found: '1 (number)', allowed: 'string' }] });
  assert.match(text, /1 problem\(s\):\n\[CONFIG_INVALID\] c\.yaml: state\.dir: wrong type\n {4}found: {3}1 \(number\)\n {4}allowed: string\n/);
});
