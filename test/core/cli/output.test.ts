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

test('output — text from the wire cannot drive the terminal: control characters are shown escaped, lines kept', () => {
  // A host (or a guest, through a plugin) chooses these bytes; printed raw, an escape sequence can retitle
  // the window, write the clipboard (OSC 52), hide text with a carriage return or reorder it (bidi).
  const hostile = 'line one\nbad \u001b]0;title\u0007 \u001b[2J \r hidden \u009b31m \u202eevil\u202c \u007f\ttab';
  const shown = 'line one\nbad \\x1b]0;title\\x07 \\x1b[2J \\r hidden \\x9b31m \\u202eevil\\u202c \\x7f\ttab';
  const stdout = capture();
  const stderr = capture();
  const output = createOutput(false, { stdout: stdout.stream, stderr: stderr.stream });
  output.result(hostile, {});
  output.note(hostile);
  output.error(CloudletError.fromWire({ code: 'HANDLER_ERROR', message: hostile }), 'h\u001b[1m1');
  assert.equal(stdout.text(), `${shown}\n`);
  assert.equal(stderr.text(), `${shown}\nerror [HANDLER_ERROR] from h\\x1b[1m1: ${shown}\n`);
});

test('output — a console log keeps its colours and CRLF line ends, nothing else that drives the terminal', () => {
  const stdout = capture();
  createOutput(false, { stdout: stdout.stream }).result('\u001b[0;32m  OK  \u001b[0m Started\r\nclip \u001b]52;c;aGk=\u0007 \r over', {}, { colours: true });
  assert.equal(stdout.text(), '\u001b[0;32m  OK  \u001b[0m Started\r\nclip \\x1b]52;c;aGk=\\x07 \\r over\n');
});

test('output — --json output is left to JSON, which escapes what it must', () => {
  const stdout = capture();
  createOutput(true, { stdout: stdout.stream }).result('ignored', { text: 'a\u001b[2Jb' });
  assert.equal(JSON.parse(stdout.text()).text, 'a\u001b[2Jb');
  assert.ok(!stdout.text().includes('\u001b'));
});

test('output — HANDLER_ERROR shows the code the handler threw, which only --json showed before', () => {
  const stderr = capture();
  createOutput(false, { stdout: capture().stream, stderr: stderr.stream }).error(
    CloudletError.fromWire({ code: 'HANDLER_ERROR', message: "ENOENT: no such file or directory, open '/x'", details: { thrownCode: 'ENOENT' } }),
    'node1',
  );
  assert.equal(stderr.text(), "error [HANDLER_ERROR] from node1: ENOENT: no such file or directory, open '/x' (thrown code: ENOENT)\n");
});

test('output — the INVALID_PAYLOAD hint does not send a third-party type to PROTOCOL.md alone', () => {
  const stderr = capture();
  createOutput(false, { stdout: capture().stream, stderr: stderr.stream }).error(CloudletError.fromWire({ code: 'INVALID_PAYLOAD', message: 'invalid payload for "acme.x"' }), 'node1');
  assert.match(stderr.text(), /\nhint: .*"cloudlet plugins" names the plugin that handles any other\n$/);
});

function hintOf(wire: { code: string; message: string; details?: unknown }): string | undefined {
  const stderr = capture();
  createOutput(false, { stdout: capture().stream, stderr: stderr.stream }).error(CloudletError.fromWire(wire), 'node1');
  return /\nhint: (.*)\n$/.exec(stderr.text())?.[1];
}

test('output — QEMU_FAILED with a KVM error points at accel: tcg; otherwise at the log, not only at a console a failed create does not leave', () => {
  for (const message of ['QEMU did not start (exit 1): Could not access KVM kernel module: No such file or directory', 'QEMU did not start (exit 1): qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied', 'QEMU did not start (exit 1): ioctl(KVM_CREATE_VM) failed: 16 Device or resource busy', 'QEMU did not start (exit 134): …/kvm.c:1234: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs\' failed.']) {
    assert.match(String(hintOf({ code: 'QEMU_FAILED', message })), /^QEMU could not use KVM on that host: set "accel: tcg" in its qemu-backend options/, message);
  }
  assert.match(String(hintOf({ code: 'QEMU_FAILED', message: 'QEMU did not start (exit 1): Could not open \'/x\'' })), /the agent log .*a failed create leaves none/);
  // A host or VM named after KVM is no KVM failure.
  assert.match(String(hintOf({ code: 'QEMU_FAILED', message: 'QEMU for kvm01.abcdefgh exited right after starting; see /var/lib/cloudlet/qemu/kvm01.abcdefgh/serial.log' })), /the agent log/);
});

test('output — VM_NOT_FOUND for a VM of another host says how to reach it, for either transport', () => {
  assert.match(String(hintOf({ code: 'VM_NOT_FOUND', message: 'VM "b.abcdefgh" belongs to host "b", not to "a"', details: { vm: 'b.abcdefgh', owner: 'b', host: 'a' } })), /names host "b": over RabbitMQ, leave out --host .*local socket reaches only its own host's VMs/);
  assert.match(String(hintOf({ code: 'VM_NOT_FOUND', message: 'no VM "a.abcdefgh" on host a', details: { vm: 'a.abcdefgh' } })), /cloudlet vm list/);
});
