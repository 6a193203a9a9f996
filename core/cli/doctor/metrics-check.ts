/** Whether the metrics plugin's endpoint answers: the agent's own health as a load balancer sees it. */
import { request } from 'node:http';
import { ok, warn, type CheckResult } from './check.ts';

export interface MetricsOptions {
  listen: string;
  healthPath: string;
}

export async function metricsCheck(options: MetricsOptions): Promise<CheckResult> {
  const plugin = 'metrics';
  const separator = options.listen.lastIndexOf(':');
  const host = options.listen.slice(0, separator).replace(/^\[|\]$/g, '');
  const port = Number(options.listen.slice(separator + 1));
  const outcome = await new Promise<{ status: number; body: string } | { error: string }>((resolve) => {
    const req = request({ host, port, path: options.healthPath, timeout: 2_000 }, (res) => {
      let body = '';
      res.on('data', (chunk: Uint8Array) => (body += String(chunk)));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 2 s')));
    req.on('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }));
    req.end();
  });
  const url = `http://${options.listen}${options.healthPath}`;
  if ('error' in outcome) {
    return outcome.error === 'ECONNREFUSED'
      ? warn('metrics', plugin, `nothing listens on ${options.listen} (is the agent running?)`, 'start the agent; the metrics plugin opens the endpoint when it starts')
      : warn('metrics', plugin, `${url} did not answer: ${outcome.error}`, 'check the agent log and the listen address');
  }
  if (outcome.status === 200) return ok('metrics', plugin, `${url} answers 200: the agent runs and its transport is up`);
  if (outcome.status === 503) return warn('metrics', plugin, `${url} answers 503: ${outcome.body.trim().slice(0, 200)}`, 'see "cloudlet doctor" for the broker or socket, and the agent log');
  return warn('metrics', plugin, `${url} answers ${outcome.status}: something other than cloudlet may listen on ${options.listen}`, 'choose another metrics listen address');
}
