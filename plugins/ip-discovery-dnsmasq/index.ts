/**
 * ip-discovery-dnsmasq: tells a VM's addresses from dnsmasq's lease file, matched by the VM's MAC, and wakes
 * waiting callers as soon as the file changes. Optionally ("managed") runs dnsmasq on the VM bridge itself,
 * for hosts that have no DHCP server.
 */
import { definePlugin } from '../../core/plugin-api.ts';
import { dnsmasqErrors } from './errors.ts';
import { startManagedDnsmasq, stopManagedDnsmasq } from './hooks.ts';
import { dnsmasqOptionsSchema } from './options.ts';

export default definePlugin({
  name: 'ip-discovery-dnsmasq',
  version: '1.0.0',
  api: '^1.7.0',
  description: "VM addresses from dnsmasq's lease file; optionally runs dnsmasq on the VM bridge.",
  provides: ['ip-discovery'],
  capabilityModules: { 'ip-discovery': new URL('./strategy.ts', import.meta.url) },
  options: dnsmasqOptionsSchema,
  errors: dnsmasqErrors,
  hooks: {
    start: startManagedDnsmasq,
    stop: stopManagedDnsmasq,
  },
});
