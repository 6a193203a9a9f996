/** Runs a program with an argv array (never a shell) and collects its output, with a timeout and a signal. */
import { spawn } from 'node:child_process';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Rejects only when the program cannot be started (e.g. ENOENT) or the signal aborts; a non-zero exit resolves. */
export function runProgram(argv: readonly string[], options: { timeoutMs?: number; signal?: AbortSignal; input?: string } = {}): Promise<RunResult> {
  const [file, ...args] = argv;
  return new Promise((resolve, reject) => {
    const child = spawn(file as string, args, { stdio: ['pipe', 'pipe', 'pipe'], signal: options.signal });
    child.stdin.on('error', () => undefined); // a program that exits without reading all its input
    child.stdin.end(options.input ?? '');
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => (stdout += chunk));
    child.stderr.on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 10_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
