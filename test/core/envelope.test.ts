import assert from 'node:assert/strict';
import test from 'node:test';
import { decodeEnvelope, makeProgress, makeReply, makeRequest, formatPath } from '../../core/envelope.ts';
import { CloudletError, cloudletError, registerPluginErrors, toCloudletError } from '../../core/errors.ts';
import { FrameReader } from '../../core/transports/ndjson.ts';

const LIMIT = 1024;

test('envelope — a valid request decodes', () => {
  const request = makeRequest({ type: 'host-info', payload: {}, deadline: Date.now() + 1000, target: 'host-a' });
  const decoded = decodeEnvelope(JSON.stringify(request), 'request', LIMIT);
  assert.equal(decoded.ok, true);
  assert.deepEqual(decoded.ok && decoded.envelope, request);
});

test('envelope — each way of being wrong has its code, and the id is salvaged when it is valid', () => {
  const cases: [string, string, string | null][] = [
    ['{', 'BAD_JSON', null],
    ['"text"', 'BAD_ENVELOPE', null],
    ['null', 'BAD_ENVELOPE', null],
    ['{"kind":"request","id":"a","type":"x"}', 'UNSUPPORTED_VERSION', 'a'],
    ['{"v":"1","kind":"request","id":"a","type":"x"}', 'UNSUPPORTED_VERSION', 'a'],
    ['{"v":1,"kind":"event","id":"a","type":"x"}', 'BAD_ENVELOPE', 'a'],
    ['{"v":1,"kind":"request","type":"x"}', 'BAD_ENVELOPE', null],
    ['{"v":1,"kind":"request","id":"has space","type":"x"}', 'BAD_ENVELOPE', null],
    ['{"v":1,"kind":"request","id":"a","type":"x","deadline":-5}', 'BAD_ENVELOPE', 'a'],
    ['{"v":1,"kind":"request","id":"a","type":"x","target":"Host_A"}', 'BAD_ENVELOPE', 'a'],
    [`{"v":1,"kind":"request","id":"a","type":"x","payload":"${'z'.repeat(LIMIT)}"}`, 'MESSAGE_TOO_LARGE', null],
  ];
  for (const [raw, code, id] of cases) {
    const decoded = decodeEnvelope(raw, 'request', LIMIT);
    assert.equal(decoded.ok, false, raw);
    if (!decoded.ok) {
      assert.equal(decoded.error.code, code, raw);
      assert.equal(decoded.id, id, raw);
    }
  }
  const noVersion = decodeEnvelope('{"kind":"request","id":"a","type":"x"}', 'request', LIMIT);
  assert.match(!noVersion.ok ? noVersion.error.message : '', /has no "v" field/);
});

test('envelope — a receiver that takes two kinds decodes each with its own schema and names both when refusing', () => {
  const reply = makeReply({ id: 'a', type: 't' }, 'h', { ok: true, result: { n: 1 } });
  const progress = makeProgress(makeRequest({ id: 'a', type: 't', payload: {} }), 'h', 'step');
  for (const envelope of [reply, progress]) {
    const decoded = decodeEnvelope(Buffer.from(JSON.stringify(envelope)), ['reply', 'progress'], LIMIT);
    assert.equal(decoded.ok && decoded.envelope.kind, envelope.kind);
  }
  // Each kind is held to its own schema: a progress without a stage is not let through as a reply.
  const { stage: _stage, ...noStage } = progress;
  assert.equal(decodeEnvelope(JSON.stringify(noStage), ['reply', 'progress'], LIMIT).ok, false);
  const request = decodeEnvelope(JSON.stringify(makeRequest({ id: 'a', type: 't', payload: {} })), ['reply', 'progress'], LIMIT);
  assert.equal(request.ok, false);
  assert.equal(!request.ok && request.error.message, 'expected an envelope of kind "reply" or "progress", found "request"');
  assert.equal(!request.ok && request.id, 'a');
});

test('envelope — replies have error exactly when ok is false; long error messages are cut to fit', () => {
  assert.equal(decodeEnvelope('{"v":1,"kind":"reply","id":"a","host":"h","ok":false}', 'reply', LIMIT).ok, false);
  assert.equal(decodeEnvelope('{"v":1,"kind":"reply","id":"a","host":"h","ok":true,"error":{"code":"X","message":"m"}}', 'reply', LIMIT).ok, false);
  const reply = makeReply({ id: 'a', type: 't' }, 'h', { ok: false, error: { code: 'HANDLER_ERROR', message: 'x'.repeat(10_000) } });
  const decoded = decodeEnvelope(JSON.stringify(reply), 'reply', 64 * 1024);
  assert.equal(decoded.ok, true);
  assert.equal(reply.error?.message.length, 4096);
});

test('errors — fromWire takes retryable from the catalogue, not from the peer', () => {
  const rebuilt = CloudletError.fromWire({ code: 'INVALID_PAYLOAD', message: 'm', retryable: true });
  assert.equal(rebuilt.retryable, false);
  const unknown = CloudletError.fromWire({ code: 'SOMEONE_ELSES', message: 'm', retryable: true });
  assert.equal(unknown.retryable, true);
  registerPluginErrors({ ACME_FULL: { message: 'full', retryable: true } });
  assert.equal(CloudletError.fromWire({ code: 'ACME_FULL', message: 'm', retryable: false }).retryable, true);
});

test('errors — anything thrown becomes a coded error; Node system codes do not pass as catalogue codes', () => {
  assert.equal(toCloudletError(new Error('plain')).code, 'HANDLER_ERROR');
  assert.equal(toCloudletError(Object.assign(new Error('no file'), { code: 'ENOENT' })).code, 'HANDLER_ERROR');
  assert.equal(toCloudletError({ code: 'BUSY', message: 'm' }).code, 'BUSY');
  assert.equal(toCloudletError('a string').message, 'a string');
  assert.equal(cloudletError('TIMEOUT').retryable, true);
});

test('envelope — paths are written the way config problems name them', () => {
  assert.equal(formatPath(['plugins', 2, 'options', 'leaseFile']), 'plugins[2].options.leaseFile');
  assert.equal(formatPath([]), '(root)');
});

test('ndjson — frames split across chunks, several per chunk, and oversize frames skipped up to the newline', () => {
  const frames: string[] = [];
  const oversize: number[] = [];
  const reader = new FrameReader(10, { onFrame: (f) => frames.push(f.toString('utf8')), onOversize: (n) => oversize.push(n) });
  reader.push(Buffer.from('{"a"'));
  reader.push(Buffer.from(':1}\n{"b":2}\n\n  \n'));
  reader.push(Buffer.from('0123456789ABCDEF'));
  reader.push(Buffer.from('more\nok\n'));
  // A multi-byte character split between chunks survives.
  const snow = Buffer.from('"☃"\n');
  reader.push(snow.subarray(0, 2));
  reader.push(snow.subarray(2));
  assert.deepEqual(frames, ['{"a":1}', '{"b":2}', 'ok', '"☃"']);
  assert.deepEqual(oversize, [20]);
});
