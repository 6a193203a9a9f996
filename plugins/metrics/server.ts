/** The HTTP endpoint: GET the metrics path for Prometheus, GET the health path for a monitor or load balancer. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AgentView } from '../../core/plugin-api.ts';
import type { Registry } from 'prom-client';

export interface EndpointOptions {
  host: string;
  port: number;
  metricsPath: string;
  healthPath: string;
  registry: Registry;
  agent: AgentView;
  hostId: string;
  transportKind: string;
  onError(error: unknown): void;
}

export function splitListen(listen: string): { host: string; port: number } {
  const separator = listen.lastIndexOf(':');
  return { host: listen.slice(0, separator).replace(/^\[|\]$/g, ''), port: Number(listen.slice(separator + 1)) };
}

/**
 * Connections the endpoint serves at once. A scraper and a health checker need a few; the server runs
 * inside the agent, and every connection an attacker can open and hold costs the agent a descriptor.
 */
export const MAX_CONNECTIONS = 64;

export async function startEndpoint(options: EndpointOptions): Promise<{ server: Server; address: string }> {
  // Node checks its header and request timeouts only this often (30 s by default): a slow client sending
  // one header line a second would hold its connection that long.
  const server = createServer({ connectionsCheckingInterval: 1_000 }, (req, res) => {
    // The origin form (/metrics) or the absolute form (http://host/metrics) that HTTP/1.1 servers must take.
    const path = requestPath(req.url);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end(`${req.method} is not served here: GET or HEAD ${options.metricsPath} or ${options.healthPath}\n`);
      return;
    }
    if (path === options.healthPath) {
      const state = options.agent.state();
      const transportUp = options.agent.transportUp();
      const healthy = state === 'running' && transportUp;
      const body = { status: healthy ? 'ok' : 'unavailable', host: options.hostId, state, transport: { kind: options.transportKind, up: transportUp }, inFlight: options.agent.inFlight() };
      res.writeHead(healthy ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : `${JSON.stringify(body)}\n`);
      return;
    }
    if (path === options.metricsPath) {
      options.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': options.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (error: unknown) => {
          options.onError(error);
          res.writeHead(500, { 'content-type': 'text/plain' }).end('collecting metrics failed; see the agent log\n');
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: try ${options.metricsPath} or ${options.healthPath}\n`);
  });
  // A scraper that never reads cannot hold a connection (or the agent's shutdown) forever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  // Idle keep-alive connections go soon; past MAX_CONNECTIONS new ones are closed at once.
  server.keepAliveTimeout = 5_000;
  server.timeout = 15_000;
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  return { server, address: `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}` };
}

function requestPath(url: string | undefined): string {
  try {
    return new URL(url ?? '/', 'http://endpoint').pathname;
  } catch {
    return '';
  }
}

export async function stopEndpoint(server: Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
  await closed;
}
