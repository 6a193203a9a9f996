/**
 * Progress of a long command on stderr. On a terminal: one line redrawn in place with a spinner, the stages
 * so far and the time taken (`allocating → starting → running → 10.77.0.23`). Elsewhere (a pipe, journald,
 * CI): one plain line per stage. With --json: nothing, so stdout and stderr stay quiet for scripts.
 */
import process from 'node:process';
import type { ProgressEnvelope } from '../envelope.ts';
import { seconds } from './output.ts';

export interface Progress {
  /** A progress envelope from the host; `alive` and `accepted` are not stages and are ignored. */
  onProgress(progress: ProgressEnvelope): void;
  /** A stage the CLI itself reached (e.g. the address found after --wait-ip). */
  stage(label: string, host?: string): void;
  /** Ends the display: a final line on a terminal, nothing elsewhere. */
  finish(summary?: string): void;
}

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

const STAGE_LABELS: Record<string, string> = { 'waiting-for-ip': 'waiting for IP' };

export interface ProgressOptions {
  /** What the line is about, e.g. `vm create tiny`. */
  title: string;
  json: boolean;
  stream?: NodeJS.WriteStream | (NodeJS.WritableStream & { isTTY?: boolean });
  /** Redraw interval on a terminal (tests use a small one). */
  tickMs?: number;
}

export function createProgress(options: ProgressOptions): Progress {
  const stream = options.stream ?? process.stderr;
  if (options.json) return { onProgress: () => undefined, stage: () => undefined, finish: () => undefined };
  const started = Date.now();
  if (!(stream as { isTTY?: boolean }).isTTY) {
    const print = (label: string, host?: string) => stream.write(`… ${host ? `${host}: ` : ''}${label}\n`);
    return {
      onProgress: (p) => {
        if (p.stage === 'alive' || p.stage === 'accepted') return;
        print(`${p.stage}${p.detail ? ` ${JSON.stringify(p.detail)}` : ''}`, p.host);
      },
      stage: print,
      finish: () => undefined,
    };
  }
  const stages: string[] = [];
  let host: string | undefined;
  let frame = 0;
  let finished = false;
  const render = () => {
    const line = `${SPINNER[frame++ % SPINNER.length]} ${options.title}${host ? ` on ${host}` : ''}: ${stages.join(' → ') || 'sending'} (${seconds(Date.now() - started)})`;
    stream.write(`\r\x1b[2K${line}`);
  };
  const timer = setInterval(render, options.tickMs ?? 100);
  timer.unref();
  const add = (label: string, from?: string) => {
    if (finished) return;
    host ??= from;
    if (stages[stages.length - 1] !== label) stages.push(label);
    render();
  };
  render();
  return {
    onProgress: (p) => {
      if (p.stage !== 'alive' && p.stage !== 'accepted') add(STAGE_LABELS[p.stage] ?? p.stage, p.host);
      else host ??= p.host;
    },
    stage: (label, from) => add(label, from),
    finish: (summary) => {
      if (finished) return;
      finished = true;
      clearInterval(timer);
      stream.write(`\r\x1b[2K${summary ? `${summary} (${seconds(Date.now() - started)})\n` : ''}`);
    },
  };
}
