import assert from 'node:assert/strict';
import test from 'node:test';
import { CloudletError } from '../../core/errors.ts';
import { createLogger, lazyChild, memoryDestination, redactUrlCredentials } from '../../core/logger.ts';

test('logger — passwords in URLs are masked in fields and in messages', () => {
  const memory = memoryDestination();
  const log = createLogger({ level: 'info', format: 'json', destination: memory.stream });
  log.info({ url: 'amqp://cloud:s3cret@broker.example:5672/vhost', nested: { list: ['https://u:pw@h/x'] } }, 'connecting to amqp://cloud:s3cret@broker');
  const [line] = memory.lines();
  const text = JSON.stringify(line);
  assert.doesNotMatch(text, /s3cret|:pw@/);
  assert.equal(line?.url, 'amqp://cloud:***@broker.example:5672/vhost');
  assert.equal(line?.msg, 'connecting to amqp://cloud:***@broker');
});

test('logger — secret keys are redacted at any of the first levels', () => {
  const memory = memoryDestination();
  const log = createLogger({ level: 'info', format: 'json', destination: memory.stream });
  log.info({ password: 'p1', transport: { secret: 'p2', auth: { token: 'p3' } }, apiKey: 'p4', keep: 'visible' }, 'config');
  const [line] = memory.lines();
  const text = JSON.stringify(line);
  for (const secret of ['p1', 'p2', 'p3', 'p4']) assert.ok(!text.includes(`"${secret}"`), `${secret} leaked: ${text}`);
  assert.equal(line?.keep, 'visible');
});

test('logger — child loggers carry plugin and message ids; levels filter', () => {
  const memory = memoryDestination();
  const log = createLogger({ level: 'info', format: 'json', destination: memory.stream });
  log.child({ plugin: 'p', msgId: 'm1', type: 'host-info' }).info('handled');
  log.debug('not shown');
  const lines = memory.lines();
  assert.equal(lines.length, 1);
  assert.deepEqual([lines[0]?.plugin, lines[0]?.msgId, lines[0]?.type], ['p', 'm1', 'host-info']);
});

test('logger — a lazy child logs with its bindings, redacted, and is made only when a level is enabled', () => {
  const memory = memoryDestination();
  const log = createLogger({ level: 'warn', format: 'json', destination: memory.stream });
  let children = 0;
  const child = log.child.bind(log);
  log.child = ((...args: Parameters<typeof child>) => {
    children++;
    return child(...args);
  }) as typeof log.child;
  const lazy = lazyChild(log, { msgId: 'm2', type: 'list-vms' });
  lazy.debug('accepted');
  lazy.info({ elapsedMs: 3 }, 'handled');
  assert.equal(children, 0);
  assert.equal(memory.lines().length, 0);
  lazy.warn({ code: 'TIMEOUT', password: 'hunter2' }, 'failed');
  lazy.error('plain string');
  assert.equal(children, 1);
  const lines = memory.lines();
  assert.deepEqual(
    lines.map((l) => [l.msgId, l.type, l.msg, l.code, l.password]),
    [
      ['m2', 'list-vms', 'failed', 'TIMEOUT', '[redacted]'],
      ['m2', 'list-vms', 'plain string', undefined, undefined],
    ],
  );
});

test('logger — URL masking leaves URLs without credentials alone', () => {
  assert.equal(redactUrlCredentials('amqp://broker:5672 and http://x/y?a=b'), 'amqp://broker:5672 and http://x/y?a=b');
  assert.equal(redactUrlCredentials('amqps://user:p%40ss@h'), 'amqps://user:***@h');
  // An "@" left unencoded in the password: URL parsers take the last one as the separator, so must this.
  assert.equal(redactUrlCredentials('connecting to amqp://user:p@ss@broker:5672/v now'), 'connecting to amqp://user:***@broker:5672/v now');
});

test('logger — an error with a cause is logged once, its cause beside it with its own code and details', () => {
  // Before, pino's default serializer appended every cause's message to the error's: a hook failure read
  // "…: dnsmasq on br9 did not start: X: dnsmasq on br9 did not start: X: X", and the inner code
  // (DNSMASQ_START_FAILED) and its details were nowhere in the line.
  const memory = memoryDestination();
  const log = createLogger({ level: 'info', format: 'json', destination: memory.stream });
  const inner = new CloudletError('DNSMASQ_START_FAILED', 'dnsmasq on br9 did not start: spawn ENOENT', { details: { bridge: 'br9' }, cause: new Error('spawn ENOENT') });
  const outer = new CloudletError('PLUGIN_HOOK_FAILED', `plugin "x" failed in its start hook: ${inner.message}`, { cause: inner, details: { plugin: 'x', hook: 'start' } });
  log.error({ err: outer }, 'agent failed to start');
  const err = memory.lines()[0]?.err as { message: string; code: string; cause: { code: string; message: string; details: unknown; cause: { message: string } } };
  assert.equal(err.message, 'plugin "x" failed in its start hook: dnsmasq on br9 did not start: spawn ENOENT');
  assert.equal(err.code, 'PLUGIN_HOOK_FAILED');
  assert.equal(err.cause.code, 'DNSMASQ_START_FAILED');
  assert.deepEqual(err.cause.details, { bridge: 'br9' });
  assert.equal(err.cause.cause.message, 'spawn ENOENT');
});

test('logger — a URL password in an error\'s or its cause\'s message or stack is masked', () => {
  // Before, formatters.log skipped errors and their serializer ran after it: the password reached the log.
  const memory = memoryDestination();
  const log = createLogger({ level: 'info', format: 'json', destination: memory.stream });
  const inner = new Error('cannot connect to amqp://bob:hunter2@broker:5672/');
  log.error({ err: new CloudletError('BROKER_UNAVAILABLE', 'lost amqp://bob:hunter2@broker', { cause: inner }) }, 'broker gone');
  const line = JSON.stringify(memory.lines()[0]);
  assert.ok(!line.includes('hunter2'), line);
  assert.match(line, /amqp:\/\/bob:\*\*\*@broker/);
});
