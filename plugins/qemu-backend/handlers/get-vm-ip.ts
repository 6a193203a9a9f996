import { defineHandler } from '../../../core/plugin-api.ts';
import { findAddresses, loadStrategies } from '../discovery.ts';
import { qemuError } from '../errors.ts';
import { qemuOptionsSchema } from '../options.ts';
import { getVmIpPayload } from '../schemas.ts';
import { requireRecord } from '../vm-ops.ts';
import { runningPid } from '../processes.ts';
import { bootedAt, vmPaths } from '../state.ts';

const STALE_HINT =
  'only addresses seen before the VM last started were found: the guest may still be booting, or an ip-discovery plugin misjudges their age (ip-discovery-dnsmasq: leaseTimeSeconds must be the lease time dnsmasq hands out)';

export default defineHandler(getVmIpPayload, qemuOptionsSchema, async ({ vm, wait, timeoutMs, includeLinkLocal }, ctx) => {
  const record = await requireRecord(ctx.options, vm, ctx.host);
  if ((await runningPid(vmPaths(ctx.options.stateDir, vm).pidfile, vm)) === undefined) {
    if (wait) throw qemuError('IP_NOT_FOUND', `${vm} is not running; start it first`, { vm, state: 'stopped' });
    return { vm, mac: record.mac, addresses: [], strategies: [], hint: 'the VM is not running' };
  }
  const strategies = await loadStrategies(ctx.options, ctx);
  if (strategies.length === 0) {
    // A wait could only run out: said now, as an error, so that a script does not take "no address" for one.
    if (wait) throw qemuError('IP_NOT_FOUND', `cannot wait for an address of ${vm}: host ${ctx.host.id} has no ip-discovery plugin configured`, { vm, noDiscovery: true });
    return { vm, mac: record.mac, addresses: [], strategies: [], hint: 'this host has no ip-discovery plugin configured' };
  }
  const pidfile = vmPaths(ctx.options.stateDir, vm).pidfile;
  const stillRunning = async () => (await runningPid(pidfile, vm)) !== undefined;
  // The wait ends a little before the message's deadline when that comes first (a payload timeoutMs longer
  // than the caller's deadline or the type's pool timeout), so the caller learns which plugins were asked.
  // A wait is for this boot's address: evidence older than the guest's last boot does not end it.
  const freshSince = wait ? await bootedAt(vmPaths(ctx.options.stateDir, vm)) : undefined;
  const { cutByDeadline, waitMs, staleOnly, ...answer } = await findAddresses(
    ctx.options,
    strategies,
    record,
    { wait, timeoutMs, includeLinkLocal, stillRunning, answerBy: ctx.message.deadline, ...(freshSince === undefined ? {} : { freshSince }) },
    ctx,
  );
  if (wait && answer.addresses.length === 0) {
    const within = cutByDeadline ? `within ${waitMs} ms, all the request's deadline left of the ${timeoutMs} ms asked` : `within ${timeoutMs} ms`;
    throw qemuError('IP_NOT_FOUND', `no address for ${vm} ${within} (asked: ${answer.strategies.join(', ')})`, { vm, strategies: answer.strategies });
  }
  if (staleOnly) return { vm, mac: record.mac, ...answer, hint: STALE_HINT };
  return { vm, mac: record.mac, ...answer };
});
