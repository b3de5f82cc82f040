import type pg from 'pg';
import type { Db } from '../db/pool.js';
import { AppError } from '../http/errors.js';
import { isoUtc } from '../http/time.js';
import type { NodeRegistry } from '../metadata/registry.js';
import type { Metrics } from '../metrics/metrics.js';
import { interiorGaps, keyCounters, newestReadingMs, nodeIntervalSeconds, qualityCounts } from './quality-store.js';

/** A silence is a gap when strictly longer than this many expected intervals. */
export const GAP_TOLERANCE_FACTOR = 1.5;
/** Most gaps listed in one report (`gapCount` has the total). */
export const MAX_LISTED_GAPS = 1000;
/** A node is stale when its newest reading is older than this many expected intervals (the contract's rule for `latest`). */
export const STALE_FACTOR = 3;

/** One stretch without readings. Times are RFC 3339 UTC. */
export interface QualityGap {
  /** The last reading before the silence, or the range start when the range begins silent. */
  start: string;
  /** The first reading after the silence, or the range's effective end (min(to, now)) when it ends silent. */
  end: string;
  /** Expected readings that did not arrive inside it (see docs/telemetry-export-quality.md). */
  missing: number;
}

/** The data-quality report of one node over [from, to). */
export interface DataQualityReport {
  nodeId: string;
  from: string;
  to: string;
  /** The node's telemetryIntervalSeconds the figures were computed with. */
  intervalSeconds: number;
  /** Interval-aligned reading slots (multiples of the interval since the epoch) in [from, min(to, now)). */
  expected: number;
  /** Distinct readings stored in [from, to). */
  received: number;
  /** min(100, 100 × received / expected), 2 decimals; 100 when nothing was expected. */
  completenessPct: number;
  /** Identical re-sends, from ingestion's per-UTC-day counters of every day the range touches. */
  duplicates: number;
  /** Re-sends that replaced a reading with changed values, same days as `duplicates`. */
  corrected: number;
  /** Readings in range flagged out of range (|powerKw| > 1.1 × capacityKw at ingestion). */
  outOfRange: number;
  /** Readings in range flagged as late arrivals at ingestion. */
  late: number;
  /** The first MAX_LISTED_GAPS gaps in time order. */
  gaps: QualityGap[];
  /** Number of gaps in the range (may exceed gaps.length). */
  gapCount: number;
  /** Measurement time of the node's newest reading (any range); null when it has none. */
  lastReadingAt: string | null;
  /** True when there is no reading or the newest is older than STALE_FACTOR × interval at the time of the request. */
  stale: boolean;
  /** 0–100, see qualityScore. */
  score: number;
}

/** Interval-aligned slots k × intervalMs in [from, end): epoch ms in, a count out. */
export function expectedSlots(from: number, end: number, intervalMs: number): number {
  return end > from ? Math.ceil(end / intervalMs) - Math.ceil(from / intervalMs) : 0;
}

/**
 * The quality score, 0–100 (integer): completeness scaled down by the share of bad readings.
 * score = 100 × c × (1 − 0.5 × outOfRange/received) × (1 − 0.25 × late/received) × (1 − 0.25 × resends/sends)
 * with c = completeness in 0–1, resends = duplicates + corrected, sends = received + resends. Shares are 0
 * without readings.
 */
export function qualityScore(r: { expected: number; received: number; outOfRange: number; late: number; duplicates: number; corrected: number }): number {
  const c = r.expected > 0 ? Math.min(1, r.received / r.expected) : 1;
  const oor = r.received > 0 ? Math.min(1, r.outOfRange / r.received) : 0;
  const late = r.received > 0 ? Math.min(1, r.late / r.received) : 0;
  const resends = r.duplicates + r.corrected;
  const sends = r.received + resends;
  const resent = sends > 0 ? Math.min(1, resends / sends) : 0;
  return Math.round(100 * c * (1 - 0.5 * oor) * (1 - 0.25 * late) * (1 - 0.25 * resent));
}

/** Computes data-quality reports; every figure comes from SQL aggregates and window functions over one snapshot. */
export class DataQualityService {
  constructor(
    private readonly db: Db,
    private readonly nodes: NodeRegistry,
    private readonly metrics: Metrics,
  ) {}

  /**
   * @param from range start, epoch ms, inclusive
   * @param to range end, epoch ms, exclusive
   * @param now the present, epoch ms (expected readings and staleness stop here)
   */
  async report(nodeId: string, from: number, to: number, now = Date.now()): Promise<DataQualityReport> {
    const intervalSeconds = this.nodes.get(nodeId)?.telemetryIntervalSeconds ?? (await nodeIntervalSeconds(this.db.readPool, nodeId));
    if (intervalSeconds === undefined) throw new AppError(404, 'NODE_NOT_FOUND', `unknown node "${nodeId}"`);
    const intervalMs = intervalSeconds * 1000;
    const toleranceMs = GAP_TOLERANCE_FACTOR * intervalMs;
    // Slots after now are not missing yet.
    const end = Math.min(to, now);
    const expected = expectedSlots(from, end, intervalMs);

    const facts = await this.metrics.timeStore('telemetry_quality', 'report', () =>
      this.snapshot(async (c) => {
        const counts = await qualityCounts(c, nodeId, from, to, toleranceMs / 1000);
        const leading = counts.firstMs !== null && counts.firstMs - from > toleranceMs;
        const interior = await interiorGaps(c, nodeId, from, to, toleranceMs / 1000, MAX_LISTED_GAPS - (leading ? 1 : 0));
        const resent = await keyCounters(c, nodeId, from, to);
        const newest = await newestReadingMs(c, nodeId);
        return { counts, leading, interior, resent, newest };
      }),
    );
    const { counts, interior, resent, newest } = facts;

    const gaps: QualityGap[] = [];
    const gap = (startMs: number, endMs: number, missing: number) => gaps.push({ start: isoUtc(startMs), end: isoUtc(endMs), missing });
    let gapCount = counts.interiorGaps;
    if (counts.firstMs === null) {
      if (end - from > toleranceMs) {
        gap(from, end, expected);
        gapCount++;
      }
    } else {
      // Before the first reading: how many whole intervals fit between the range start and it.
      if (facts.leading) {
        gap(from, counts.firstMs, Math.floor((counts.firstMs - from) / intervalMs));
        gapCount++;
      }
      // Between two readings (and after the last): the readings that would have come every interval
      // after the earlier one, up to now (a reading stamped ahead of the clock can end a silence after now).
      for (const g of interior) gap(g.prevMs, g.nextMs, Math.max(0, Math.ceil((Math.min(g.nextMs, end) - g.prevMs) / intervalMs) - 1));
      const lastMs = counts.lastMs as number;
      if (end - lastMs > toleranceMs) {
        gapCount++;
        if (gaps.length < MAX_LISTED_GAPS && counts.interiorGaps <= interior.length) gap(lastMs, end, Math.ceil((end - lastMs) / intervalMs) - 1);
      }
    }

    const received = counts.received;
    const completenessPct = expected > 0 ? Math.round(Math.min(100, (100 * received) / expected) * 100) / 100 : 100;
    const figures = { expected, received, outOfRange: counts.outOfRange, late: counts.late, duplicates: resent.duplicates, corrected: resent.corrected };
    return {
      nodeId,
      from: isoUtc(from),
      to: isoUtc(to),
      intervalSeconds,
      expected,
      received,
      completenessPct,
      duplicates: resent.duplicates,
      corrected: resent.corrected,
      outOfRange: counts.outOfRange,
      late: counts.late,
      gaps,
      gapCount,
      lastReadingAt: newest === null ? null : isoUtc(newest),
      stale: newest === null || now - newest > STALE_FACTOR * intervalMs,
      score: qualityScore(figures),
    };
  }

  /** Runs `fn` in one read-only snapshot, so every figure describes the same moment. */
  private async snapshot<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.db.readPool.connect();
    let failure: Error | undefined;
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      // After a failure the connection is dropped rather than returned mid-transaction.
      client.release(failure);
    }
  }
}
