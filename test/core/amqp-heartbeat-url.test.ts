/** The AMQP heartbeat an agent asks for goes into its broker URL, unless the URL sets one itself. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { withAmqpHeartbeat } from '../../core/transports/amqp/connection.ts';

test('amqp url — heartbeat=N is added, a heartbeat of the URL\'s own is kept, credentials and vhost stay as they were', () => {
  assert.equal(withAmqpHeartbeat('amqp://u:p%40ss@broker.lan:5672/prod', 10), 'amqp://u:p%40ss@broker.lan:5672/prod?heartbeat=10');
  assert.equal(withAmqpHeartbeat('amqps://broker.lan/prod?frameMax=0', 10), 'amqps://broker.lan/prod?frameMax=0&heartbeat=10');
  assert.equal(withAmqpHeartbeat('amqp://broker.lan?heartbeat=30', 10), 'amqp://broker.lan?heartbeat=30');
  assert.equal(withAmqpHeartbeat('amqp://broker.lan', undefined), 'amqp://broker.lan');
  // The vhost "/" (encoded) and a bare host keep their meaning for amqplib.
  assert.equal(new URL(withAmqpHeartbeat('amqp://h/%2F', 10)).pathname, '/%2F');
  assert.equal(new URL(withAmqpHeartbeat('amqp://h', 10)).pathname, '');
});
