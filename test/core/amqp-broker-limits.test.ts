import assert from 'node:assert/strict';
import test from 'node:test';
import { brokerLimitAdvice, brokerMaxMessageBytes, LearnedBrokerLimit } from '../../core/transports/amqp/broker-limits.ts';

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

const refusal = (max: number) => new Error(`PRECONDITION_FAILED - message size ${max + 1} is larger than configured max size ${max}`);

test('LearnedBrokerLimit — learned from a refusal and told once; forgotten on the next connection', () => {
  const told: string[] = [];
  const limit = new LearnedBrokerLimit({ error: (_obj: unknown, msg: string) => told.push(msg) } as never, 1_048_576);
  assert.equal(limit.learn(new Error('NOT_FOUND - no exchange'), false), false);
  assert.equal(limit.bytes, undefined);
  assert.equal(limit.learn(refusal(65_536), false), true);
  assert.equal(limit.learn(refusal(65_536), false), true);
  assert.equal(limit.bytes, 65_536);
  assert.equal(told.length, 1, 'the operator is told once per limit');
  limit.connected();
  assert.equal(limit.bytes, undefined, 'the broker may have come back with another limit');
});

test('LearnedBrokerLimit — a refusal that makes us reconnect is kept for that one next connection', () => {
  const limit = new LearnedBrokerLimit({ error: () => undefined } as never, 1_048_576);
  limit.learn(refusal(4_096), true);
  limit.connected();
  assert.equal(limit.bytes, 4_096, 'kept: what was refused is about to be sent again');
  limit.connected();
  assert.equal(limit.bytes, undefined);
});
