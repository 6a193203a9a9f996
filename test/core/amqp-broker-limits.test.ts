import assert from 'node:assert/strict';
import test from 'node:test';
import { brokerLimitAdvice, brokerMaxMessageBytes } from '../../core/transports/amqp/broker-limits.ts';

test('brokerMaxMessageBytes — reads the limit from RabbitMQ\'s refusal, configured or at its ceiling', () => {
  const configured = new Error('Channel closed by server: 406 (PRECONDITION-FAILED) with message "PRECONDITION_FAILED - message size 100150 is larger than configured max size 65536"');
  assert.equal(brokerMaxMessageBytes(configured), 65_536);
  assert.equal(brokerMaxMessageBytes(new Error('PRECONDITION_FAILED - message size 600000000 is larger than max size 536870912')), 536_870_912);
});

test('brokerMaxMessageBytes — any other channel error is not a size limit', () => {
  assert.equal(brokerMaxMessageBytes(new Error('Channel closed by server: 404 (NOT-FOUND) with message "NOT_FOUND - no exchange \'x\' in vhost \'/\'"')), undefined);
  assert.equal(brokerMaxMessageBytes('PRECONDITION_FAILED - inequivalent arg \'durable\''), undefined);
  assert.equal(brokerMaxMessageBytes(undefined), undefined);
});

test('brokerLimitAdvice — names both limits and what to change', () => {
  const advice = brokerLimitAdvice(65_536, 1_048_576);
  assert.match(advice, /over 65536 bytes \(its max_message_size\), less than limits\.maxMessageBytes \(1048576\)/);
  assert.match(advice, /Set limits\.maxMessageBytes to at most 65536/);
});
