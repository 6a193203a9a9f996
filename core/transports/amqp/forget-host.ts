/**
 * Taking a host out of service (`cloudlet hosts forget H`): its queue goes, and every registry drops it, so
 * lists stop warning that it is down and a request to it is UNKNOWN_HOST, not HOST_DOWN. Only a host that is
 * down can be forgotten; one that comes back later is simply known again (PROTOCOL.md 11.7).
 */
import { Buffer } from 'node:buffer';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { cloudletError } from '../../errors.ts';
import type { HostRegistry } from './host-registry.ts';
import type { AmqpNames } from './names.ts';

export interface ForgetResult {
  host: string;
  /** How long ago the host was last heard from, if the registry knew it. */
  lastSeenMsAgo: number | null;
  /** Whether its queue P.host.H existed (and was deleted). */
  queueDeleted: boolean;
  /** Requests that were waiting in that queue, dropped with it (each had a TTL and would have expired). */
  droppedRequests: number;
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
  if (known?.state === 'up') {
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
  await context.channel.waitForConfirms();
  registry.forget(host);
  return { host, lastSeenMsAgo: known?.agoMs ?? null, queueDeleted: queue.existed, droppedRequests: queue.messages };
}

/**
 * Deletes the host's queue if nobody consumes it. The broker checks that itself (`ifUnused`), so an agent
 * that connected a moment ago, or is up but not heard (its heartbeats lost), keeps its queue: HOST_UP.
 * Done on a channel of its own: a failed delete or a passive check of a missing queue closes its channel.
 */
async function deleteIdleQueue(context: ForgetContext, queue: string, host: string): Promise<{ existed: boolean; messages: number }> {
  const channel = await context.model.createChannel();
  let closed = false;
  channel.on('error', () => undefined);
  channel.on('close', () => (closed = true));
  try {
    try {
      await channel.checkQueue(queue);
    } catch {
      return { existed: false, messages: 0 };
    }
    try {
      const { messageCount } = await channel.deleteQueue(queue, { ifUnused: true });
      return { existed: true, messages: messageCount };
    } catch (error) {
      if (/PRECONDITION_FAILED|in use/i.test(String((error as Error).message))) {
        throw cloudletError('HOST_UP', `host "${host}" is not heard from, but its queue ${queue} has a consumer: its agent is connected`, {
          host,
          hint: `check the agent on ${host}: it consumes requests but its heartbeats do not arrive; stop it before forgetting the host`,
        });
      }
      throw error;
    }
  } finally {
    if (!closed) await channel.close().catch(() => undefined);
  }
}
