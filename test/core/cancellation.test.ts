import assert from 'node:assert/strict';
import test from 'node:test';
import { Cancellation } from '../../core/cancellation.ts';
import { cloudletError } from '../../core/errors.ts';

const stopping = cloudletError('SHUTTING_DOWN', 'the agent is stopping');

test('cancellation — listeners hear the first reason once; a late listener hears it at once; a removed one not at all', () => {
  const cancellation = new Cancellation();
  const heard: string[] = [];
  cancellation.onCancel((reason) => heard.push(`a:${reason.code}`));
  const stop = cancellation.onCancel(() => heard.push('removed'));
  stop();
  assert.equal(cancellation.reason, undefined);
  cancellation.cancel(stopping);
  cancellation.cancel(cloudletError('CANCELLED', 'again'));
  cancellation.onCancel((reason) => heard.push(`late:${reason.code}`));
  assert.deepEqual(heard, ['a:SHUTTING_DOWN', 'late:SHUTTING_DOWN']);
  assert.equal(cancellation.reason, stopping);
});

test('cancellation — a listener that throws does not keep the others from running; its error comes after them', () => {
  const cancellation = new Cancellation();
  const heard: string[] = [];
  cancellation.onCancel(() => {
    throw new Error('first listener failed');
  });
  cancellation.onCancel(() => heard.push('second'));
  assert.throws(() => cancellation.cancel(stopping), /first listener failed/);
  assert.deepEqual(heard, ['second']);
});
