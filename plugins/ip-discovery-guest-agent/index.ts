/** ip-discovery-guest-agent: a VM's addresses as qemu-guest-agent inside the guest reports them. */
import { definePlugin, z } from '../../core/plugin-api.ts';

export default definePlugin({
  name: 'ip-discovery-guest-agent',
  version: '1.0.0',
  api: '^1.3.0',
  description: "A VM's addresses from qemu-guest-agent inside the guest.",
  provides: ['ip-discovery'],
  capabilityModules: { 'ip-discovery': new URL('./strategy.ts', import.meta.url) },
  options: z
    .object({
      /** How long one question to the guest agent may take. */
      timeoutMs: z.number().int().min(100).max(60_000).default(3_000),
    })
    .strict(),
});
