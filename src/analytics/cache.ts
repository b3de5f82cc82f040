/**
 * Cache of analytics answers in `infra.cache` (Redis when configured, so instances share it).
 *
 * An entry's key is the request plus a freshness fingerprint read before the answer is computed,
 * so invalidation is O(1) (a changed fingerprint is a new key; superseded entries just expire) and
 * needs no coordination between instances. The fingerprint has two parts:
 * - generation counters per (node, UTC month) and per (fleet, UTC month), kept in the cache and
 *   bumped by every instance that receives `telemetry.changed` for that month;
 * - a database part (store.ts) written in the same transaction as the telemetry or transaction
 *   that changes an answer. Pub/sub messages are sent after the writer has acknowledged the
 *   write, so the counters alone could serve a stale answer in that gap; the database part
 *   cannot: it has changed before the client hears "stored".
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Cache, PubSub } from '../cache/types.js';
import type { Metrics } from '../metrics/metrics.js';
import type { NodeRegistry } from '../metadata/registry.js';
import { TELEMETRY_CHANGED_CHANNEL } from '../telemetry/ingest-service.js';

/** TTL of answers whose period touches today (s). */
export const TTL_OPEN_SECONDS = 3600;
/** TTL of answers over closed periods (s). */
export const TTL_CLOSED_SECONDS = 86_400;
/** TTL of a generation counter (s): longer than any entry's, so an entry keyed by a vanished counter has expired too. */
export const TTL_GENERATION_SECONDS = 2 * TTL_CLOSED_SECONDS;

/** The fleet's counters (portfolio, peer groups). */
export const FLEET = '*';

const KEY_PREFIX = 'analytics:v1:';
/** Generation counters: one hash per UTC month, a field per node and one for the fleet. */
const GEN_PREFIX = 'analytics:genh:';
// A node unknown to the registry still holds for at most 3 × the largest interval (1 day).
const MAX_CAP_MS = 3 * 86_400_000;

/** UTC months `YYYY-MM` overlapping `[lo, hi)` (epoch ms). */
export function monthsOverlapping(lo: number, hi: number): string[] {
  const out: string[] = [];
  const d = new Date(lo);
  let y = d.getUTCFullYear();
  let m = d.getUTCMonth();
  while (Date.UTC(y, m, 1) < hi) {
    out.push(`${y}-${String(m + 1).padStart(2, '0')}`);
    m++;
    if (m === 12) {
      m = 0;
      y++;
    }
  }
  return out;
}

export class AnalyticsCache {
  private unsubscribe?: () => Promise<void>;

  constructor(
    private readonly cache: Cache,
    private readonly pubsub: PubSub,
    private readonly nodes: NodeRegistry,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    this.unsubscribe = await this.pubsub.subscribe(TELEMETRY_CHANGED_CHANNEL, (message) => {
      this.onTelemetryChanged(message).catch((err: unknown) => this.logger.warn({ err }, 'analytics: generation bump failed'));
    });
  }

  async stop(): Promise<void> {
    await this.unsubscribe?.();
  }

  /**
   * A write changed readings in `[from, to)` per node (the message is an array of such changes, or
   * one): answers over any instant from `from` up to the last reading's hold end can change, so
   * the counters of every UTC month there move on, the node's and the fleet's. A month's counters
   * are one hash, so a write bumps them with one command per month, in one round trip.
   */
  async onTelemetryChanged(message: string): Promise<void> {
    let parsed: unknown;
    try {
      parsed = JSON.parse(message);
    } catch {
      return;
    }
    const changes = (Array.isArray(parsed) ? parsed : [parsed]) as { nodeId?: unknown; from?: unknown; to?: unknown }[];
    const byMonth = new Map<string, Set<string>>();
    for (const m of changes) {
      if (!m || typeof m.nodeId !== 'string' || typeof m.from !== 'number' || typeof m.to !== 'number') continue;
      const interval = this.nodes.get(m.nodeId)?.telemetryIntervalSeconds;
      const capMs = interval ? 3 * interval * 1000 : MAX_CAP_MS;
      for (const month of monthsOverlapping(m.from, m.to + capMs)) {
        let owners = byMonth.get(month);
        if (!owners) byMonth.set(month, (owners = new Set([FLEET])));
        owners.add(m.nodeId);
      }
    }
    if (byMonth.size === 0) return;
    const generation = randomUUID();
    await Promise.all([...byMonth].map(([month, owners]) => this.cache.hashSet(`${GEN_PREFIX}${month}`, [...owners].map((o) => [o, generation] as const), TTL_GENERATION_SECONDS)));
  }

  /** The counters of `owner` (a nodeId or FLEET) for the UTC months overlapping `[lo, hi)`, joined. */
  async generations(owner: string, lo: number, hi: number): Promise<string> {
    const months = monthsOverlapping(lo, hi);
    const values = await Promise.all(months.map((month) => this.cache.hashGet(`${GEN_PREFIX}${month}`, owner)));
    return values.map((v) => v ?? '0').join(',');
  }

  /** Cache key of an answer: the kind, the normalised request, and the fingerprint it was computed under. */
  key(kind: string, request: unknown, fingerprint: string): string {
    const h = createHash('sha256').update(JSON.stringify(request)).update('\0').update(fingerprint).digest('base64url');
    return `${KEY_PREFIX}${kind}:${h}`;
  }

  /**
   * The cached answer under `key`, or `compute()` stored under it with the TTL for a period
   * ending at `periodEnd` (epoch ms): 1 h when it ends after `todayStart`, else 24 h.
   */
  async getOrCompute<T>(key: string, periodEnd: number, todayStart: number, compute: () => Promise<T>): Promise<{ value: T; hit: boolean }> {
    const cached = await this.cache.get(key);
    if (cached !== null) {
      this.metrics.cacheRequests.inc({ cache: 'analytics', result: 'hit' });
      return { value: JSON.parse(cached) as T, hit: true };
    }
    this.metrics.cacheRequests.inc({ cache: 'analytics', result: 'miss' });
    const value = await compute();
    const ttl = periodEnd > todayStart ? TTL_OPEN_SECONDS : TTL_CLOSED_SECONDS;
    await this.cache.set(key, JSON.stringify(value), ttl);
    return { value, hit: false };
  }
}
