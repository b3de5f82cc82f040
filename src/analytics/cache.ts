/**
 * Cache of analytics answers in `infra.cache` (Redis when configured, so instances share it).
 *
 * An entry's key is derived from the request and a freshness fingerprint read from PostgreSQL
 * before the answer is computed (store.ts: `nodeFingerprint`, `fleetFingerprint`). The
 * fingerprint's parts are written in the same database transaction as the telemetry or
 * transaction that changes an answer, so a write acknowledged to its client changes the key of
 * every answer it touches: no stale answer is served even before the write's pub/sub message
 * (`telemetry.changed`, `transactions.appended`, sent after the acknowledgement) arrives.
 * Invalidation is O(1) and needs no coordination between instances; superseded entries expire
 * by TTL.
 */
import { createHash } from 'node:crypto';
import type { Cache } from '../cache/types.js';
import type { Metrics } from '../metrics/metrics.js';

/** TTL of answers whose period touches today (s). */
export const TTL_OPEN_SECONDS = 3600;
/** TTL of answers over closed periods (s). */
export const TTL_CLOSED_SECONDS = 86_400;

const KEY_PREFIX = 'analytics:v1:';

export class AnalyticsCache {
  constructor(
    private readonly cache: Cache,
    private readonly metrics: Metrics,
  ) {}

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
