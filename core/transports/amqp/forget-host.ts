/**
 * Taking a host out of service (`cloudlet hosts forget H`): its queue goes, and every registry drops it, so
 * lists stop warning that it is down and a request to it is UNKNOWN_HOST, not HOST_DOWN. Only a host that is
 * down can be forgotten; one that comes back later is simply known again (PROTOCOL.md 11.7).
 */
import { Buffer } from 'node:buffer';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { CloudletError, cloudletError } from '../../errors.ts';
import type { HostRegistry } from './host-registry.ts';
import type { AmqpNames } from './names.ts';

export interface ForgetResult {
  host: string;
  /** How long ago the host was last heard from, if the registry knew it. */
  lastSeenMsAgo: number | null;
  /** Whether its queue P.host.H existed and was deleted. */
  queueDeleted: boolean;
  /** Requests that were waiting in that queue, dropped with it (each had a TTL and would have expired). */
  droppedRequests: number;
  /** Why the queue is still there, when the broker refused to delete it (this user may not configure it). */
  queueKept?: string;
}

export interface ForgetContext {
  model: ChannelModel;
  /** The client's channel, for the presence message. */
  channel: ConfirmChannel;
  names: AmqpNames;
  registry: HostRegistry;
  prefix: string;
}

export async function forgetHost(host: string, context: ForgetContext): Promise<ForgetResult> {
  const { registry, names } = context;
  const known = registry.entries().find((entry) => entry.host === host);
  // One that said it stopped may go at once (its queue is checked for a consumer below anyway).
  if (known?.state === 'up' && !known.stopped) {
    throw cloudletError('HOST_UP', `host "${host}" is up (last heard ${(known.agoMs / 1000).toFixed(1)} s ago): stop its agent before forgetting it`, {
      host,
      hint: `stop the agent on ${host} ("systemctl stop cloudlet" there); an agent that runs is known again at its next heartbeat anyway`,
    });
  }
  const queue = await deleteIdleQueue(context, names.hostQueue(host), host);
  if (!known && !queue.existed) {
    throw cloudletError('UNKNOWN_HOST', `no host "${host}" is known on this cloud (prefix ${context.prefix}), and it has no queue`, { target: host, liveHosts: registry.liveHosts() });
  }
  // Told to everyone, ourselves included (a registry ignores a forget of a host heard since).
  context.channel.publish(names.presenceExchange, '', Buffer.from(JSON.stringify({ v: 1, kind: 'forget', host, from: 'client' })), { contentType: 'application/json' });
  await withinLimit(context.channel.waitForConfirms(), CONFIRM_WAIT_MS, `the broker did not confirm the forget of "${host}" within ${CONFIRM_WAIT_MS / 1000} s (a resource alarm?)`);
  registry.forget(host);
  return {
    host,
    lastSeenMsAgo: known?.agoMs ?? null,
    queueDeleted: queue.existed && queue.kept === undefined,
    droppedRequests: queue.messages,
    ...(queue.kept !== undefined && { queueKept: queue.kept }),
  };
}

/** How long `hosts forget` waits for the broker, for each of its steps. */
const CONFIRM_WAIT_MS = 10_000;

/**
 * Deletes the host's queue if nobody consumes it. The broker checks that itself (`ifUnused`), so an agent
 * that connected a moment ago, or is up but not heard (its heartbeats lost), keeps its queue: HOST_UP.
 * A user without configure permission on the queue (the CLI's user in SECURITY.md) cannot delete it: the
 * host is forgotten all the same, and `kept` says how to delete the queue. Done on a channel of its own: a
 * failed delete or a passive check of a missing queue closes its channel.
 */
async function deleteIdleQueue(context: ForgetContext, queue: string, host: string): Promise<{ existed: boolean; messages: number; kept?: string }> {
  const channel = await withinLimit(context.model.createChannel(), CONFIRM_WAIT_MS, `the broker did not open a channel within ${CONFIRM_WAIT_MS / 1000} s (a resource alarm?)`);
  let closed = false;
  channel.on('error', () => undefined);
  channel.on('close', () => (closed = true));
  const refusal = (error: unknown) => String((error as Error).message);
  try {
    try {
      await withinLimit(channel.checkQueue(queue), CONFIRM_WAIT_MS, `the broker did not answer a check of queue ${queue} within ${CONFIRM_WAIT_MS / 1000} s`);
    } catch (error) {
      if (/\b404\b|NOT.FOUND/i.test(refusal(error))) return { existed: false, messages: 0 };
      throw brokerTrouble(queue, error);
    }
    try {
      const { messageCount } = await withinLimit(channel.deleteQueue(queue, { ifUnused: true }), CONFIRM_WAIT_MS, `the broker did not answer the delete of queue ${queue} within ${CONFIRM_WAIT_MS / 1000} s`);
      return { existed: true, messages: messageCount };
    } catch (error) {
      if (/\b406\b|PRECONDITION.FAILED|in use/i.test(refusal(error))) {
        throw cloudletError('HOST_UP', `host "${host}" is not heard from, but its queue ${queue} has a consumer: its agent is connected`, {
          host,
          hint: `check the agent on ${host}: it consumes requests but its heartbeats do not arrive; stop it before forgetting the host`,
        });
      }
      if (/\b403\b|ACCESS.REFUSED/i.test(refusal(error))) {
        return { existed: true, messages: 0, kept: `the broker refused to delete it (${refusal(error)}): this user may not configure it; an administrator can (rabbitmqctl delete_queue ${queue}, with -p VHOST)` };
      }
      throw brokerTrouble(queue, error);
    }
  } finally {
    // Not waited for past the limit: a broker that stopped reading us does not answer the close either.
    if (!closed) await withinLimit(channel.close(), CONFIRM_WAIT_MS, 'close').catch(() => undefined);
  }
}

function brokerTrouble(queue: string, error: unknown) {
  if (error instanceof CloudletError) return error;
  return cloudletError('BROKER_UNAVAILABLE', `the broker did not let us check or delete queue ${queue}: ${(error as Error).message}`, { queue });
}

/** `work`, or BROKER_UNAVAILABLE saying `why` if it has not settled within `ms` (a broker in a resource alarm never answers). */
async function withinLimit<T>(work: Promise<T>, ms: number, why: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(cloudletError('BROKER_UNAVAILABLE', why)), ms);
  });
  try {
    return await Promise.race([work, limit]);
  } finally {
    clearTimeout(timer);
  }
}
