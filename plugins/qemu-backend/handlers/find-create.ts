/**
 * What a create-vm request left on this host, by its request id: the VM it made, a create of it at work, what
 * a dead run of it left (a folder without vm.json), the tombstone of its deleted VM, or a create of it this
 * host accepted that waits for its turn (`ctx.inFlight`, so a queued create is not taken for nothing). A client that lost a
 * create's answer asks every host before sending it again, so the repeat reaches the host that has it
 * instead of making a second VM elsewhere (the CLI's `vm create --request-id` without `--host`).
 */
import { readdir } from 'node:fs/promises';
import { defineHandler } from '../../../core/plugin-api.ts';
import { qemuOptionsSchema } from '../options.ts';
import { findCreatePayload, VM_ID_PATTERN } from '../schemas.ts';
import { hasRecordFile, listRecords, readRecord } from '../state.ts';
import { deletedByRequest, deletedRecord } from '../tombstones.ts';
import { vmIdForRequest } from '../vm-id.ts';
import { markHolds, readCreatingMark } from '../vm-ops.ts';

export type FoundCreate = { found: 'vm' | 'creating' | 'leftover'; vm: string } | { found: 'deleted'; vm: string; deletedAt: string } | { found: 'accepted' } | { found: null };

export default defineHandler(findCreatePayload, qemuOptionsSchema, async ({ request }, ctx) => {
  const answer = (found: FoundCreate) => ({ host: ctx.host.id, request, ...found });
  // A create of the request this host accepted that waits for its thread (create-vm runs one at a time),
  // as the agent says (seesInFlight). `?.`: a test's stand-in context may lack it.
  const accepted = ctx.inFlight?.['create-vm']?.includes(request) === true;
  const made = (await listRecords(ctx.options.stateDir)).find((record) => record.request === request);
  if (made) return answer({ found: 'vm', vm: made.id });
  // A folder without vm.json whose `creating` mark names the request: its create at work, or a dead run's.
  // At the id derived from the request, a folder without vm.json and without a mark (or a torn one) counts
  // too, as create-vm counts it (its own leftover, which a run of the request removes and starts over).
  const derived = vmIdForRequest(ctx.host.id, request);
  const folders = (await readdir(ctx.options.stateDir).catch(() => [] as string[])).filter((name) => VM_ID_PATTERN.test(name)).sort();
  for (const id of folders) {
    const mark = await readCreatingMark(ctx.options, id);
    const ours = mark?.request === request || (id === derived && mark?.request === undefined);
    if (!ours) continue;
    if (await hasRecordFile(ctx.options.stateDir, id)) {
      // Its create finished since the records were read above.
      if ((await readRecord(ctx.options.stateDir, id).catch(() => undefined))?.request === request) return answer({ found: 'vm', vm: id });
      continue;
    }
    if (markHolds(mark, ctx.host)) return answer({ found: 'creating', vm: id });
    // A rerun waits here: it removes its leftover and starts over (at the derived id), so say that.
    return answer(accepted ? { found: 'accepted' } : { found: 'leftover', vm: id });
  }
  // As create-vm refuses it: a tombstone found by the request, or one at the derived id that names none.
  const byRequest = await deletedByRequest(ctx.options.stateDir, request);
  const atDerived = byRequest ? undefined : await deletedRecord(ctx.options.stateDir, derived);
  const deleted = byRequest ?? (atDerived?.request === undefined ? atDerived : undefined);
  if (deleted) return answer({ found: 'deleted', vm: deleted.vm, deletedAt: deleted.deletedAt });
  // Nothing on disk yet, but a create of it waits here; which id it gets is chosen only when it starts. It
  // makes the VM here unless it finds the host full then (it is handed on: create-vm's capacity check).
  if (accepted) return answer({ found: 'accepted' });
  return answer({ found: null });
});
