/**
 * Who is alive, from heartbeats. Every host publishes one every `heartbeatMs` on the presence exchange and
 * answers a probe at once; a host not heard from for `downAfterMs` is down. Agents and clients both keep one.
 * A down host stays known until an operator forgets it (`cloudlet hosts forget`), then until it is heard again.
 */
import { z } from 'zod';
import { hostIdSchema } from '../../envelope.ts';

export const heartbeatSchema = z.object({
  v: z.literal(1),
  kind: z.literal('heartbeat'),
  host: hostIdSchema,
  version: z.string().max(64),
  plugins: z.array(z.string().max(128)).max(200),
  /** Which inbound routes the host takes: direct, any, broadcast. */
  routes: z.array(z.enum(['direct', 'any', 'broadcast'])).max(3),
  startedAt: z.number(),
  sentAt: z.number(),
  /** The last heartbeat of an agent that has stopped cleanly, sent as it closes its connection. */
  stopped: z.literal(true).optional(),
  /** The sender's view of the other hosts, sent in answer to a probe, so a new client learns them at once. */
  view: z
    .array(
      z.object({
        host: hostIdSchema,
        agoMs: z.number().min(0),
        routes: z.array(z.enum(['direct', 'any', 'broadcast'])).max(3),
        /** The routes it took when it last took work (a draining host announces none): see HostEntry. */
        tookRoutes: z.array(z.enum(['direct', 'any', 'broadcast'])).max(3).optional(),
        /** Its last heartbeat said it had stopped. */
        stopped: z.literal(true).optional(),
      }),
    )
    .max(10_000)
    .optional(),
  /** With `view`: the hosts the sender was told to forget, and how long ago, so one that missed it learns it. */
  forgotten: z
    .array(z.object({ host: hostIdSchema, agoMs: z.number().min(0) }))
    .max(10_000)
    .optional(),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;

export const probeSchema = z.object({ v: z.literal(1), kind: z.literal('probe'), from: z.string().max(128) });

/** `cloudlet hosts forget H`: a host taken out of service, to be dropped from every registry (PROTOCOL.md 11.7). */
export const forgetSchema = z.object({ v: z.literal(1), kind: z.literal('forget'), host: hostIdSchema, from: z.string().max(128) });

export interface HostEntry {
  host: string;
  /**
   * Local clock time of the last heartbeat (or of the view that mentioned it), moved to "now" when our own
   * connection comes back (forgiveSilence): what live and down are judged by.
   */
  lastSeen: number;
  /** The same, never forgiven: what views tell others, and what a forget is weighed against. */
  heardAt: number;
  routes: Heartbeat['routes'];
  /**
   * The routes it took when it last took work. A host that stops gracefully announces no routes while it
   * drains; this remembers that it answered broadcasts, so a list can say its VMs are missing once it is down.
   */
  tookRoutes: Heartbeat['routes'];
  /**
   * Its agent said it stopped cleanly (its last heartbeat). Shown as such; for routing it stays live until
   * downAfterMs like any host, so requests sent during a restart wait in its queue for the new agent.
   */
  stopped?: true;
  heartbeat?: Heartbeat;
}

export type InboundRoute = Heartbeat['routes'][number];

/** Forgotten hosts remembered, at most: the oldest go first (a cloud has far fewer hosts than this). */
const MAX_FORGOTTEN = 10_000;

export class HostRegistry {
  readonly #hosts = new Map<string, HostEntry>();
  /**
   * When each forgotten host was forgotten, on our clock. A view that still names the host from before then
   * (sent by a participant that has not heard of the forget yet) must not bring it back; the host's own
   * heartbeat, or a view that heard it since, does.
   */
  readonly #forgotten = new Map<string, number>();
  readonly #downAfterMs: number;

  constructor(downAfterMs: number) {
    this.#downAfterMs = downAfterMs;
  }

  record(heartbeat: Heartbeat, receivedAt = Date.now()): void {
    const tookRoutes = (routes: Heartbeat['routes'], known: HostEntry | undefined) => (routes.length > 0 ? routes : (known?.tookRoutes ?? []));
    this.#hosts.set(heartbeat.host, {
      host: heartbeat.host,
      lastSeen: receivedAt,
      heardAt: receivedAt,
      routes: heartbeat.routes,
      tookRoutes: tookRoutes(heartbeat.routes, this.#hosts.get(heartbeat.host)),
      ...(heartbeat.stopped ? { stopped: true as const } : {}),
      heartbeat,
    });
    for (const gone of heartbeat.forgotten ?? []) this.forget(gone.host, receivedAt - gone.agoMs);
    for (const seen of heartbeat.view ?? []) {
      const lastSeen = receivedAt - seen.agoMs;
      const known = this.#hosts.get(seen.host);
      if ((this.#forgotten.get(seen.host) ?? -Infinity) >= lastSeen) continue;
      if (!known || known.lastSeen < lastSeen) {
        const { stopped: _earlier, ...rest } = known ?? {};
        this.#hosts.set(seen.host, {
          ...rest,
          host: seen.host,
          lastSeen,
          heardAt: lastSeen,
          routes: seen.routes,
          tookRoutes: seen.tookRoutes ?? tookRoutes(seen.routes, known),
          ...(seen.stopped ? { stopped: true as const } : {}),
        });
      }
    }
  }

  /**
   * Drops a host last heard before `at` and remembers that it was forgotten then. One heard since (it came
   * back) stays. Says whether the host was known.
   */
  forget(host: string, at = Date.now()): boolean {
    const known = this.#hosts.get(host);
    // heardAt, not lastSeen: a host forgotten while our connection was down was forgiven its silence since.
    if (known && known.heardAt > at) return false;
    if ((this.#forgotten.get(host) ?? -Infinity) < at) {
      this.#forgotten.delete(host); // re-inserted: the map's order stays oldest first
      this.#forgotten.set(host, at);
      if (this.#forgotten.size > MAX_FORGOTTEN) this.#forgotten.delete(this.#forgotten.keys().next().value as string);
    }
    return this.#hosts.delete(host);
  }

  /** The forgotten hosts, for a view: a participant that missed the forget learns it from any answer to a probe. */
  forgottenView(now = Date.now()): NonNullable<Heartbeat['forgotten']> {
    return [...this.#forgotten].map(([host, at]) => ({ host, agoMs: Math.max(0, now - at) }));
  }

  /** Hosts that were alive when our own connection dropped (see forgiveSilence). */
  #liveAtOutage: string[] = [];

  noteOutage(now = Date.now()): void {
    this.#liveAtOutage = this.liveHosts(undefined, now);
  }

  /**
   * While our own connection was down we heard nothing from anyone; that says nothing about them. The
   * hosts that were alive when it dropped get a fresh `downAfterMs` to be heard again instead of being
   * declared down at once. Hosts already down stay down.
   */
  forgiveSilence(now = Date.now()): void {
    for (const host of this.#liveAtOutage) {
      const entry = this.#hosts.get(host);
      if (entry) entry.lastSeen = Math.max(entry.lastSeen, now);
    }
    this.#liveAtOutage = [];
  }

  isLive(host: string, now = Date.now()): boolean {
    const entry = this.#hosts.get(host);
    return entry !== undefined && now - entry.lastSeen <= this.#downAfterMs;
  }

  /** Known, but silent for longer than downAfterMs. Unknown hosts are not "down". */
  isDown(host: string, now = Date.now()): boolean {
    const entry = this.#hosts.get(host);
    return entry !== undefined && now - entry.lastSeen > this.#downAfterMs;
  }

  liveHosts(route?: InboundRoute, now = Date.now()): string[] {
    return [...this.#hosts.values()]
      .filter((e) => now - e.lastSeen <= this.#downAfterMs && (route === undefined || e.routes.includes(route)))
      .map((e) => e.host)
      .sort();
  }

  entries(now = Date.now()): (HostEntry & { state: 'up' | 'down'; agoMs: number })[] {
    return [...this.#hosts.values()]
      .map((e) => ({ ...e, agoMs: now - e.lastSeen, state: now - e.lastSeen <= this.#downAfterMs ? ('up' as const) : ('down' as const) }))
      .sort((a, b) => a.host.localeCompare(b.host));
  }

  view(now = Date.now()): NonNullable<Heartbeat['view']> {
    // When we really heard each host: a silence we forgave ourselves is not news to anyone else.
    return [...this.#hosts.values()].map((e) => ({ host: e.host, agoMs: Math.max(0, now - e.heardAt), routes: e.routes, tookRoutes: e.tookRoutes, ...(e.stopped ? { stopped: e.stopped } : {}) }));
  }
}
