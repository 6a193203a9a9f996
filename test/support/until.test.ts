/** The tests' own wait (test/helpers.ts `until`): it ends when its condition holds, and fails the test when it never does. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { until } from '../helpers.ts';

test('until — returns once the condition holds; past its time it fails, naming what it waited for', async () => {
  let polls = 0;
  await until(() => ++polls === 3, 5_000);
  assert.equal(polls, 3, 'polled until it held, then stopped');

  // Before, a wait that timed out returned quietly, and the test went on as if the condition had come true.
  await assert.rejects(until(() => false, 120, 'a VM that never comes'), (error: Error) => {
    assert.ok(error instanceof assert.AssertionError);
    assert.equal(error.message, 'waited 120 ms in vain for a VM that never comes');
    return true;
  });
  await assert.rejects(until(async () => polls < 0, 60), /waited 60 ms in vain for .*polls\s*<\s*0/);
});
