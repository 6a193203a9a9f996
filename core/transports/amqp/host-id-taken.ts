/**
 * Two agents connected as one host id would split that host's requests between them: each VM command would
 * reach the agent that owns the VM only half the time, and the other would answer VM_NOT_FOUND or
 * UNKNOWN_TYPE. The broker keeps them apart: the host queue is consumed exclusively and the broadcast queue
 * is exclusive, so the second agent's setup fails. This turns the broker's refusal into what it means.
 */
import { CloudletError, cloudletError } from '../../errors.ts';
import { thrownMessage } from '../../errors.ts';

/** RabbitMQ's words: 405 RESOURCE_LOCKED (an exclusive queue of another connection), 403 "in exclusive use". */
const HELD_BY_ANOTHER = /\b405 \(RESOURCE[-_]LOCKED\)|\bRESOURCE_LOCKED\b|in exclusive use/;

export function hostIdTaken(error: unknown, hostId: string, prefix: string): CloudletError | undefined {
  if (error instanceof CloudletError || !HELD_BY_ANOTHER.test(thrownMessage(error))) return undefined;
  return cloudletError(
    'AGENT_ALREADY_RUNNING',
    `another agent is already connected to this broker as host "${hostId}" (prefix ${prefix}); two agents with one host id would split its requests between them: give each host its own host.id (or CLOUDLET_HOST_ID), or stop the other agent`,
    { hostId, prefix },
    error,
  );
}
