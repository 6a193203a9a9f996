/** A reader that stops early (`cloudlet … | head -1`) ends the CLI quietly, with the command's own exit code. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import test from 'node:test';
import { cliBin, startAgent, tempDir, writeConfig } from '../../helpers.ts';

/** Runs the CLI with its stdout closed before it writes anything; resolves with the exit code and stderr. */
function runWithClosedStdout(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cloudlet ${args.join(' ')} did not finish; stderr: ${stderr}`));
    }, 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

test('closed stdout — --help and call end quietly, without an EPIPE stack trace', async (t) => {
  // Before, "cloudlet --help | true" died of an unhandled 'error' event (write EPIPE) with a stack trace.
  const { socketPath } = await startAgent(t);
  const config = await writeConfig(await tempDir(t), 'client.yaml', `transport:\n  kind: local\n  socket: ${socketPath}\n`);
  for (const args of [['--help'], ['call', 'host-info', '--config', config], ['call', 'host-info', '--config', config, '--json']]) {
    const { code, stderr } = await runWithClosedStdout(args);
    assert.equal(stderr, '', `${args.join(' ')}: ${stderr}`);
    assert.equal(code, 0, args.join(' '));
  }
});
