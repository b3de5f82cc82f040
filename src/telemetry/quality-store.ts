import type { Queryable } from '../db/pool.js';
import { isoUtc } from '../http/time.js';

/** Counts over a node's stored readings in [from, to). Times are epoch ms. */
export interface QualityCounts {
  /** Readings stored in the range (each (nodeId, timestamp) once). */
  received: number;
  /** Readings flagged out of range (flags bit 1). */
  outOfRange: number;
  /** Readings flagged as late arrivals (flags bit 2). */
  late: number;
  /** First and last reading time in the range, epoch ms; null without readings. */
  firstMs: number | null;
  lastMs: number | null;
  /** Silences between consecutive readings in the range longer than the tolerance. */
  interiorGaps: number;
}

/** A silence between two consecutive readings: the readings' times, epoch ms. */
export interface InteriorGap {
  prevMs: number;
  nextMs: number;
}

const RANGE = `FROM telemetry WHERE node_id = $1 AND ts >= $2::timestamptz AND ts < $3::timestamptz`;

/**
 * One pass over the range: counts, flags and the number of interior gaps, with `lag` over the
 * readings in time order so that no row leaves the database.
 * @param toleranceSeconds a silence is a gap when strictly longer than this (seconds)
 */
export async function qualityCounts(db: Queryable, nodeId: string, from: number, to: number, toleranceSeconds: number): Promise<QualityCounts> {
  const { rows } = await db.query<{ received: number; out_of_range: number; late: number; first_ms: number | null; last_ms: number | null; gaps: number }>(
    `SELECT count(*) AS received,
            count(*) FILTER (WHERE flags & 1 <> 0) AS out_of_range,
            count(*) FILTER (WHERE flags & 2 <> 0) AS late,
            (extract(epoch FROM min(ts)) * 1000)::float8 AS first_ms,
            (extract(epoch FROM max(ts)) * 1000)::float8 AS last_ms,
            count(*) FILTER (WHERE ts - prev > make_interval(secs => $4::float8)) AS gaps
       FROM (SELECT ts, flags, lag(ts) OVER (ORDER BY ts) AS prev ${RANGE}) r`,
    [nodeId, isoUtc(from), isoUtc(to), toleranceSeconds],
  );
  const r = rows[0];
  return { received: r.received, outOfRange: r.out_of_range, late: r.late, firstMs: r.first_ms, lastMs: r.last_ms, interiorGaps: r.gaps };
}

/** The first `limit` interior gaps in time order (see qualityCounts for the rule). */
export async function interiorGaps(db: Queryable, nodeId: string, from: number, to: number, toleranceSeconds: number, limit: number): Promise<InteriorGap[]> {
  if (limit <= 0) return [];
  const { rows } = await db.query<{ prev_ms: number; next_ms: number }>(
    `SELECT (extract(epoch FROM prev) * 1000)::float8 AS prev_ms, (extract(epoch FROM ts) * 1000)::float8 AS next_ms
       FROM (SELECT ts, lag(ts) OVER (ORDER BY ts) AS prev ${RANGE}) r
      WHERE ts - prev > make_interval(secs => $4::float8)
      ORDER BY ts
      LIMIT $5`,
    [nodeId, isoUtc(from), isoUtc(to), toleranceSeconds, limit],
  );
  return rows.map((r) => ({ prevMs: r.prev_ms, nextMs: r.next_ms }));
}

/** Ingestion's counters (identical re-sends, corrections) of the node's keys in [from, to) (epoch ms). */
export async function keyCounters(db: Queryable, nodeId: string, from: number, to: number): Promise<{ duplicates: number; corrected: number }> {
  const { rows } = await db.query<{ duplicates: number; corrected: number }>(
    `SELECT coalesce(sum(duplicates), 0)::int8 AS duplicates, coalesce(sum(corrected), 0)::int8 AS corrected
       FROM telemetry_quality_keys WHERE node_id = $1 AND ts >= $2 AND ts < $3`,
    [nodeId, isoUtc(from), isoUtc(to)],
  );
  return rows[0];
}

/** Measurement time of the node's newest stored reading (any range), epoch ms; null when it has none. */
export async function newestReadingMs(db: Queryable, nodeId: string): Promise<number | null> {
  // Partitions are ranged on ts, so this reads the newest partition's index first and stops.
  const { rows } = await db.query<{ ms: number }>(
    `SELECT (extract(epoch FROM ts) * 1000)::float8 AS ms FROM telemetry WHERE node_id = $1 ORDER BY ts DESC LIMIT 1`,
    [nodeId],
  );
  return rows[0]?.ms ?? null;
}

/** The node's expected reporting interval (seconds), or undefined for an unknown node. */
export async function nodeIntervalSeconds(db: Queryable, nodeId: string): Promise<number | undefined> {
  const { rows } = await db.query<{ s: number }>('SELECT telemetry_interval_seconds AS s FROM nodes WHERE node_id = $1', [nodeId]);
  return rows[0]?.s;
}
