import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { runningPid } from '../processes.ts';
import { withQmp } from '../qmp.ts';
import { restartVmPayload } from '../schemas.ts';
import { markBooted, vmPaths } from '../state.ts';
import { requireRecord, setDesired, startVm, stopVm, viewOf } from '../vm-ops.ts';

export default defineHandler(restartVmPayload, qemuOptionsSchema, async ({ vm, mode }, ctx) => {
  const record = await requireRecord(ctx.options, vm, ctx.host);
  const paths = vmPaths(ctx.options.stateDir, vm);
  const pid = await runningPid(paths.pidfile, vm);
  let how: 'reset' | 'power-cycled' | 'started';
  if (pid === undefined) {
    how = 'started';
  } else if (mode === 'hard') {
    ctx.progress('resetting', { vm });
    await markBooted(paths); // before the boot it marks
    await withQmp(paths.qmp, (qmp) => qmp.execute('system_reset'));
    how = 'reset';
  } else {
    ctx.progress('stopping', { vm });
    await stopVm(ctx.options, record, { force: false, timeoutMs: ctx.options.stopTimeoutMs });
    how = 'power-cycled';
  }
  let runningAs = pid;
  if (how !== 'reset') {
    ctx.progress('starting', { vm });
    runningAs = (await startVm(ctx.options, record)).pid;
  }
  const updated = await setDesired(ctx.options, record, 'running');
  return { ...viewOf(updated, 'running', runningAs), how };
});
