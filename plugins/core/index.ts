/** The plugin every host loads: `host-info`, which exercises the whole request path end to end. */
import { definePlugin, z } from '../../core/plugin-api.ts';

export const hostInfoPayload = z.object({}).strict();

export default definePlugin({
  name: 'core',
  version: '1.0.0',
  api: '^1.9.0',
  description: 'Built-in messages every cloudlet host answers.',
  messages: {
    'host-info': {
      payload: hostInfoPayload,
      handler: new URL('./host-info.ts', import.meta.url),
      description: "This host's id, version, loaded plugins and message types, and uptime.",
      // Answers at once and blocks nothing: one thread takes every broadcast that arrives together.
      pool: { maxThreads: 1, tasksPerThread: 16, timeoutMs: 5_000 },
    },
  },
});
