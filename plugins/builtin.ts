/**
 * Built-in plugins by the name a host config uses for them (`plugins: [{ use: <name> }]`). The `core`
 * plugin (the `host-info` message) is loaded on every host without being named.
 */
export const CORE_PLUGIN_URL = new URL('./core/index.ts', import.meta.url).href;

export const builtinPlugins: Readonly<Record<string, string>> = {
  'routing-direct': new URL('./routing-direct/index.ts', import.meta.url).href,
  'routing-fanout': new URL('./routing-fanout/index.ts', import.meta.url).href,
  'qemu-backend': new URL('./qemu-backend/index.ts', import.meta.url).href,
  'ip-discovery-guest-agent': new URL('./ip-discovery-guest-agent/index.ts', import.meta.url).href,
  'ip-discovery-dnsmasq': new URL('./ip-discovery-dnsmasq/index.ts', import.meta.url).href,
  'ip-discovery-arp': new URL('./ip-discovery-arp/index.ts', import.meta.url).href,
  'protocol-aetherscale': new URL('./protocol-aetherscale/index.ts', import.meta.url).href,
  sweeper: new URL('./sweeper/index.ts', import.meta.url).href,
  metrics: new URL('./metrics/index.ts', import.meta.url).href,
};
