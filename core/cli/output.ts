/** How the CLI prints: plain text for people, one JSON document for scripts (`--json`). */
import process from 'node:process';
import type { CloudletError } from '../errors.ts';
import { formatProblem, type ConfigProblem } from '../config/problems.ts';

export interface Output {
  json: boolean;
  /** The result of the command: stdout. */
  result(human: string, machine: unknown): void;
  /** Progress and notes: stderr, so stdout stays parseable. */
  note(text: string): void;
  error(error: CloudletError): void;
}

const HINTS: Record<string, string> = {
  AGENT_UNREACHABLE: 'start an agent with "cloudlet agent --config FILE" (or "npm start"), or point --config/--socket at the running one',
  UNKNOWN_TYPE: 'run "cloudlet plugins" to see which message types this host handles',
  INVALID_PAYLOAD: 'check the payload against the message type in docs/PROTOCOL.md',
  BUSY: 'the host is saturated for this message type; retry with backoff or raise pools.<type>.maxQueue',
  TIMEOUT: 'raise pools.<type>.timeoutMs if the work legitimately takes longer',
  CLIENT_TIMEOUT: 'raise --timeout, or check the agent log for the message id',
  CONFIG_INVALID: 'run "cloudlet config check FILE" to list every problem',
};

export function createOutput(json: boolean): Output {
  return {
    json,
    result(human, machine) {
      process.stdout.write(json ? `${JSON.stringify(machine, null, 2)}\n` : `${human}\n`);
    },
    note(text) {
      if (!json) process.stderr.write(`${text}\n`);
    },
    error(error) {
      if (json) {
        process.stdout.write(`${JSON.stringify({ ok: false, error: error.toWire() }, null, 2)}\n`);
        return;
      }
      const problems = (error.details as { problems?: ConfigProblem[] } | undefined)?.problems;
      const body = problems ? `${problems.length} problem(s):\n${problems.map(formatProblem).join('\n')}` : error.message;
      const hint = HINTS[error.code];
      process.stderr.write(`error [${error.code}]: ${body}\n${hint ? `hint: ${hint}\n` : ''}`);
    },
  };
}

/** Left-aligned columns; enough for the few tables the CLI prints. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}
