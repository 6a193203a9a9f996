/** The metrics plugin's options (`plugins: [{ use: metrics, options: { listen: 127.0.0.1:9477 } }]`). */
import { isIP } from 'node:net';
import { z } from '../../core/plugin-api.ts';

const urlPath = z.string().max(100).regex(/^\/[a-zA-Z0-9/_.-]*$/, 'a URL path such as /metrics');

export const metricsOptionsSchema = z
  .object({
    /**
     * host:port of the HTTP endpoint. 127.0.0.1 keeps it on this machine; listen on a LAN address only behind
     * a firewall: the metrics tell what the host runs. Port 0 picks a free port (logged).
     */
    listen: z
      .string()
      .max(300)
      .regex(/^(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9.-]+):(\d{1,5})$/, 'host:port, e.g. 127.0.0.1:9477 or [::1]:9477')
      .refine((value) => Number(value.slice(value.lastIndexOf(':') + 1)) <= 65_535, 'a port between 0 and 65535')
      .refine((value) => listenHostKnown(value.slice(0, value.lastIndexOf(':'))), 'an IPv4 address, an IPv6 address in brackets, or a host name (such as localhost)')
      .default('127.0.0.1:9477'),
    metricsPath: urlPath.default('/metrics'),
    /** 200 while the agent runs and its transport is up (socket listening, broker connected); 503 otherwise. */
    healthPath: urlPath.default('/healthz'),
    /** Node.js process metrics from prom-client: CPU, memory, event loop delay, GC. */
    processMetrics: z.boolean().default(true),
    /**
     * VMs by state come from the host's own `list-vms` (sent through the dispatcher, so it shows up in the
     * message counts too), asked at most this often and only when scraped. 0 turns the VM gauge off.
     */
    vmStatesMaxAgeMs: z.number().int().min(0).max(3_600_000).default(15_000),
  })
  .strict();

/**
 * An IPv4 address in dotted form, an IPv6 address in brackets, or a host name of DNS labels. Not what a
 * resolver would also take: "0" or "127.1" (it reads them as 0.0.0.0 and 127.0.0.1, so "0:9477" listened
 * on every interface), or a name of digits and dots that is no address ("999.1.1.1").
 */
function listenHostKnown(host: string): boolean {
  if (host.startsWith('[')) return host.endsWith(']') && isIP(host.slice(1, -1)) === 6;
  if (/^[\d.]+$/.test(host)) return isIP(host) === 4;
  return host.split('.').every((label) => /^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(label));
}

export type MetricsOptions = z.output<typeof metricsOptionsSchema>;
