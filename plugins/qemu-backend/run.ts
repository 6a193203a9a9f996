/** Runs a program with an argv array (never a shell) and collects its output, with a timeout. */
import { spawn } from 'node:child_process';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * A program that cannot be started at all (missing binary, no permission) rejects with `failCode` (a
 * declared qemu-backend code) instead of a bare ENOENT.
 */
export function runProgram(
  argv: readonly string[],
  options: { timeoutMs?: number; signal?: AbortSignal; failCode?: 'QEMU_FAILED' | 'NETWORK_FAILED' } = {},
): Promise<RunResult> {
  const [file, ...args] = argv;
  return new Promise((resolve, reject) => {
    const child = spawn(file as string, args, { stdio: ['ignore', 'pipe', 'pipe'], signal: options.signal });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Uint8Array) => (stdout += String(chunk)));
    child.stderr.on('data', (chunk: Uint8Array) => (stderr += String(chunk)));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`cannot run ${file}: ${error.code === 'ENOENT' ? 'not found (check the binary option or PATH)' : error.message}`), {
        code: options.failCode ?? 'QEMU_FAILED',
        details: { program: file, cause: error.code },
      }));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
