/**
 * qemu-backend: VMs from base images (qcow2 overlays), one QEMU process each, controlled over QMP.
 * Handlers are stateless; a VM's lasting state is its folder under `stateDir` and its QEMU process.
 */
import { mkdir } from 'node:fs/promises';
import { definePlugin } from '../../core/plugin-api.ts';
import { qemuErrors } from './errors.ts';
import { qemuOptionsSchema } from './options.ts';
import { reconcileVms } from './reconcile.ts';
import { createVmPayload, findCreatePayload, getConsoleLogPayload, getVmIpPayload, listVmsPayload, restartVmPayload, stopVmPayload, vmRefPayload } from './schemas.ts';

const handler = (name: string) => new URL(`./handlers/${name}.ts`, import.meta.url);

export default definePlugin({
  name: 'qemu-backend',
  version: '1.0.0',
  api: '^1.13.0',
  description: 'QEMU VMs from base images, controlled over QMP.',
  provides: ['vm-backend'],
  options: qemuOptionsSchema,
  errors: qemuErrors,
  messages: {
    // One create at a time per host: the capacity check and the new VM's reservation cannot race. A repeat of
    // a request id is answered by the handler from the VM as it is now (it may be stopped or deleted since).
    'create-vm': { payload: createVmPayload, handler: handler('create-vm'), handlesRepeats: true, pool: { maxThreads: 1, maxQueue: 32, timeoutMs: 180_000 } },
    'start-vm': { payload: vmRefPayload, handler: handler('start-vm'), serializeBy: 'vm', pool: { timeoutMs: 120_000 } },
    'stop-vm': { payload: stopVmPayload, handler: handler('stop-vm'), serializeBy: 'vm', pool: { timeoutMs: 180_000 } },
    'restart-vm': { payload: restartVmPayload, handler: handler('restart-vm'), serializeBy: 'vm', pool: { timeoutMs: 240_000 } },
    'delete-vm': { payload: vmRefPayload, handler: handler('delete-vm'), serializeBy: 'vm', pool: { timeoutMs: 60_000 } },
    'list-vms': { payload: listVmsPayload, handler: handler('list-vms'), pool: { timeoutMs: 30_000 } },
    // Waiting for an address may take as long as the payload's timeoutMs (at most 10 minutes).
    // Mostly waits for a lease or a neighbour entry: a thread waits for many VMs at once.
    'get-vm-ip': { payload: getVmIpPayload, handler: handler('get-vm-ip'), pool: { maxThreads: 2, tasksPerThread: 16, timeoutMs: 620_000 } },
    'list-images': { payload: listVmsPayload, handler: handler('list-images'), pool: { timeoutMs: 30_000 } },
    'get-vm': { payload: vmRefPayload, handler: handler('get-vm'), serializeBy: 'vm', pool: { timeoutMs: 30_000 } },
    // Asked of every host before a create is sent again without a target (what the request left, where).
    'find-create': { payload: findCreatePayload, handler: handler('find-create'), seesInFlight: ['create-vm'], pool: { timeoutMs: 30_000 } },
    'get-console-log': { payload: getConsoleLogPayload, handler: handler('get-console-log'), pool: { maxThreads: 2, timeoutMs: 10_000 } },
  },
  hooks: {
    async start(ctx) {
      // One agent per stateDir, before anything in it is touched: a second agent would re-attach this one's
      // VMs, and its start-up clean-up would end a create this one is running.
      await mkdir(ctx.options.stateDir, { recursive: true, mode: 0o750 });
      await ctx.holdFolder(ctx.options.stateDir, 'stateDir');
      await reconcileVms(ctx.options, ctx.log, ctx.host.startedAt);
    },
  },
});
