/**
 * `sweep-now`: runs in a worker thread like every message, and has the agent's main thread do the sweep (see
 * relay.ts for why), passing its progress on. A dry run reports what would be done and changes nothing.
 */
import { defineHandler, z } from '../../../core/plugin-api.ts';
import { requestSweep } from '../relay.ts';
import { sweepNowPayload } from '../schemas.ts';

export default defineHandler(sweepNowPayload, z.unknown(), (payload, ctx) =>
  requestSweep(ctx.host, payload, { signal: ctx.signal, onProgress: (stage, detail) => ctx.progress(stage, detail) }),
);
