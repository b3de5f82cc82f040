/** SQL of rollups: raw reading loads, dirty marks, tier reads and the refresher's writes. */
import type { Queryable } from '../db/pool.js';
import { emptyAgg, mergeAgg, type FieldAgg, type PeriodPartial, type PowerExtras, type ReadingColumns } from './rollup-compute.js';
import { NUMERIC_FIELDS, type NumericField } from './rollup-fields.js';

/** Rollup tiers above raw, finest first. */
export type Tier = '15m' | '1h' | '1d';

export const TIER_TABLE: Readonly<Record<Tier, string>> = {
  '15m': 'telemetry_rollup_15m',
  '1h': 'telemetry_rollup_1h',
  '1d': 'telemetry_rollup_1d',
};

/** Grid of each tier in ms (buckets aligned on the UTC epoch). */
export const TIER_MS: Readonly<Record<Tier, number>> = { '15m': 900_000, '1h': 3_600_000, '1d': 86_400_000 };

const iso = (ms: number) => new Date(ms).toISOString();

// Every field: statements that replace whole buckets name them all.
const ALL_CODES = NUMERIC_FIELDS.map((f) => f.code);

// A long OR list of ranges keeps partition pruning and index range scans; chunks bound its size.
const RANGES_PER_QUERY = 200;

/**
 * Loads one node's readings in `ranges` (half-open, epoch ms, sorted, non-overlapping), with
 * the given fields and healthStatus, sorted by time.
 */
export async function loadReadings(q: Queryable, nodeId: string, fields: readonly NumericField[], ranges: readonly { lo: number; hi: number }[]): Promise<ReadingColumns> {
  const out: ReadingColumns = { ts: [], values: fields.map(() => []), health: [] };
  const cols = fields.map((f, i) => `${f.column} AS v${i}`).join(', ');
  for (let c = 0; c < ranges.length; c += RANGES_PER_QUERY) {
    const chunk = ranges.slice(c, c + RANGES_PER_QUERY);
    const params: unknown[] = [nodeId];
    const conds = chunk.map((r) => {
      params.push(iso(r.lo), iso(r.hi));
      return `(ts >= $${params.length - 1} AND ts < $${params.length})`;
    });
    const { rows } = await q.query({
      text: `SELECT (extract(epoch FROM ts) * 1000)::float8 AS t, health_status AS h${cols ? `, ${cols}` : ''}
             FROM telemetry WHERE node_id = $1 AND (${conds.join(' OR ')}) ORDER BY ts`,
      values: params,
      rowMode: 'array',
    });
    for (const r of rows as unknown[][]) {
      out.ts.push(r[0] as number);
      out.health.push(r[1] as string | null);
      for (let f = 0; f < fields.length; f++) out.values[f].push(r[2 + f] as number | null);
    }
  }
  return out;
}

/** Dirty 15-minute bucket starts of a node in `[lo, hi)` (sorted, epoch ms), and the cap its rollups were built with. */
export async function loadDirtyState(q: Queryable, nodeId: string, lo: number, hi: number): Promise<{ dirty: number[]; capSeconds: number | null }> {
  const { rows } = await q.query<{ cap: number | null; dirty: number[] }>(
    `SELECT (SELECT cap_seconds FROM telemetry_rollup_state WHERE node_id = $1) AS cap,
            ARRAY(SELECT (extract(epoch FROM bucket_start) * 1000)::float8 FROM telemetry_dirty_buckets
                  WHERE node_id = $1 AND bucket_start >= $2 AND bucket_start < $3 ORDER BY bucket_start) AS dirty`,
    [nodeId, iso(lo), iso(hi)],
  );
  return { dirty: rows[0].dirty, capSeconds: rows[0].cap };
}

/** A range of one tier's buckets that belongs to output period `idx`. */
export interface TierPiece {
  tier: Tier;
  lo: number;
  hi: number;
  idx: number;
}

// first/last as min/max over [time, value] pairs: no ordered aggregate, so the grouping can hash
// instead of sorting every row. Those pairs are the dearest part of the statement (an array per
// row and value, measured ~25 % of it), so they are computed only when first or last is asked for.
function aggColumns(firstLast: boolean): string {
  const firstV = firstLast ? `(min(ARRAY[date_part('epoch', r.first_ts), r.first_v]) FILTER (WHERE r.n > 0))[2]` : 'NULL::float8';
  const lastV = firstLast ? `(max(ARRAY[date_part('epoch', r.last_ts), r.last_v]) FILTER (WHERE r.n > 0))[2]` : 'NULL::float8';
  return `sum(r.n)::float8 AS n, sum(r.sum) AS sum, min(r.min) AS min, max(r.max) AS max,
      ${firstV} AS first_v,
      (extract(epoch FROM min(r.first_ts)) * 1000)::float8 AS first_ts,
      ${lastV} AS last_v,
      (extract(epoch FROM max(r.last_ts)) * 1000)::float8 AS last_ts,
      sum(r.integral) AS integral, sum(r.held) AS held,
      sum(r.exported_kwh) AS exported_kwh, sum(r.imported_kwh) AS imported_kwh, sum(r.available_s) AS available_s`;
}

/**
 * Pieces that cover most of their span: one index range scan over the span, each row mapped
 * to its piece through an array indexed by its grid slot (`-1` between pieces). Integer slot
 * arithmetic is far cheaper per row than `width_bucket` over timestamps; OFFSET 0 keeps the
 * mapping evaluated once per row.
 */
function scanSelect(table: string, p: { map: number; base: number; grid: number; lo: number; hi: number }, columns: string): string {
  return `SELECT r.idx, r.field, ${columns}
    FROM (SELECT x.*, ($${p.map}::int[])[((date_part('epoch', x.bucket_start) - $${p.base}::float8) / $${p.grid}::float8)::int + 1] AS idx
          FROM ${table} x
          WHERE x.node_id = $1 AND x.field = ANY($2::smallint[]) AND x.bucket_start >= $${p.lo} AND x.bucket_start < $${p.hi}
          OFFSET 0) r
    WHERE r.idx >= 0
    GROUP BY r.idx, r.field`;
}

/**
 * Sparse pieces (e.g. the 15-minute edges of each local day): one index range scan per piece.
 * LATERAL with OFFSET 0 keeps that plan whatever the statistics say (a fresh, unanalyzed rollup
 * table otherwise invites a nested loop over all of the node's rows).
 */
function probeSelect(table: string, p: { lo: number; hi: number; idx: number }, columns: string): string {
  return `SELECT p.idx, r.field, ${columns}
    FROM unnest($${p.lo}::timestamptz[], $${p.hi}::timestamptz[], $${p.idx}::int[]) AS p(lo, hi, idx)
    CROSS JOIN LATERAL (SELECT * FROM ${table} x
                        WHERE x.node_id = $1 AND x.field = ANY($2::smallint[]) AND x.bucket_start >= p.lo AND x.bucket_start < p.hi OFFSET 0) r
    GROUP BY p.idx, r.field`;
}

interface AggRow {
  idx: number;
  field: number;
  n: number;
  sum: number | null;
  min: number | null;
  max: number | null;
  first_v: number | null;
  first_ts: number | null;
  last_v: number | null;
  last_ts: number | null;
  integral: number;
  held: number;
  exported_kwh: number | null;
  imported_kwh: number | null;
  available_s: number | null;
}

/**
 * Reads the rollup rows under `pieces` (any tiers) in one statement and folds them into
 * `partials[idx]`; `fieldIndex` maps a field code to its index in the partial's field list.
 * Without `firstLast`, the partials' first and last values stay unknown (NaN); their times are kept.
 */
export async function addTierAggregates(q: Queryable, nodeId: string, fieldCodes: readonly number[], pieces: readonly TierPiece[], partials: PeriodPartial[], fieldIndex: ReadonlyMap<number, number>, firstLast = true): Promise<void> {
  if (pieces.length === 0) return;
  const columns = aggColumns(firstLast);
  const params: unknown[] = [nodeId, fieldCodes];
  const selects: string[] = [];
  for (const tier of Object.keys(TIER_TABLE) as Tier[]) {
    const mine = pieces.filter((p) => p.tier === tier).sort((a, b) => a.lo - b.lo);
    if (mine.length === 0) continue;
    const span = mine[mine.length - 1].hi - mine[0].lo;
    const covered = mine.reduce((s, p) => s + (p.hi - p.lo), 0);
    if (span <= 2 * covered + 64 * TIER_MS[tier]) {
      const g = TIER_MS[tier];
      const base = mine[0].lo;
      const map = new Array<number>((mine[mine.length - 1].hi - base) / g).fill(-1);
      for (const p of mine) for (let t = p.lo; t < p.hi; t += g) map[(t - base) / g] = p.idx;
      params.push(map, base / 1000, g / 1000, iso(base), iso(mine[mine.length - 1].hi));
      const n = params.length;
      selects.push(scanSelect(TIER_TABLE[tier], { map: n - 4, base: n - 3, grid: n - 2, lo: n - 1, hi: n }, columns));
    } else {
      params.push(mine.map((p) => iso(p.lo)), mine.map((p) => iso(p.hi)), mine.map((p) => p.idx));
      selects.push(probeSelect(TIER_TABLE[tier], { lo: params.length - 2, hi: params.length - 1, idx: params.length }, columns));
    }
  }
  const { rows } = await q.query<AggRow>(selects.join('\nUNION ALL\n'), params);
  for (const r of rows) {
    const f = fieldIndex.get(r.field);
    if (f === undefined) continue;
    const part = partials[r.idx];
    mergeRowInto(part.fields[f], r);
    if (r.exported_kwh !== null) addExtras(part.extras, r);
  }
}

function mergeRowInto(a: FieldAgg, r: AggRow): void {
  const b = emptyAgg();
  b.n = r.n;
  b.sum = r.sum ?? 0;
  if (r.n > 0) {
    b.min = r.min as number;
    b.max = r.max as number;
    b.firstV = r.first_v ?? NaN;
    b.firstTs = r.first_ts as number;
    b.lastV = r.last_v ?? NaN;
    b.lastTs = r.last_ts as number;
  }
  b.integral = r.integral;
  b.held = r.held;
  mergeAgg(a, b);
}

function addExtras(e: PowerExtras, r: AggRow): void {
  e.exportedKwh += r.exported_kwh ?? 0;
  e.importedKwh += r.imported_kwh ?? 0;
  e.availableS += r.available_s ?? 0;
}

/** A dirty mark as read by the refresher: `markedAt` is PostgreSQL's exact text, compared on delete. */
export interface DirtyMark {
  nodeId: string;
  bucketStart: number;
  markedAt: string;
}

/**
 * Up to `limit` dirty marks, by node and bucket, that no write has touched for `settleMs`: a
 * bucket still being written would be recomputed again and again, and until it settles queries
 * read it from raw anyway.
 */
export async function loadDirtyMarks(q: Queryable, limit: number, settleMs = 0): Promise<DirtyMark[]> {
  const { rows } = await q.query<{ node_id: string; b: number; at: string }>(
    `SELECT node_id, (extract(epoch FROM bucket_start) * 1000)::float8 AS b, marked_at::text AS at
     FROM telemetry_dirty_buckets WHERE marked_at <= clock_timestamp() - make_interval(secs => $2::float8 / 1000)
     ORDER BY node_id, bucket_start LIMIT $1`,
    [limit, settleMs],
  );
  return rows.map((r) => ({ nodeId: r.node_id, bucketStart: r.b, markedAt: r.at }));
}

export async function loadRollupCaps(q: Queryable): Promise<Map<string, number>> {
  const { rows } = await q.query<{ node_id: string; cap_seconds: number }>('SELECT node_id, cap_seconds FROM telemetry_rollup_state');
  return new Map(rows.map((r) => [r.node_id, r.cap_seconds]));
}

/**
 * Marks dirty every 15-minute bucket that a reading of the node can hold into under either cap,
 * and records the new cap: used when a node's telemetry interval changed.
 */
export async function markNodeForCapChange(q: Queryable, nodeId: string, oldCapSeconds: number, newCapSeconds: number): Promise<void> {
  const cap = Math.max(oldCapSeconds, newCapSeconds);
  await q.query(
    `INSERT INTO telemetry_dirty_buckets (node_id, bucket_start)
     SELECT DISTINCT $1::text, b
     FROM (SELECT DISTINCT date_bin('15 minutes', ts, TIMESTAMPTZ '2000-01-01T00:00:00Z') AS s FROM telemetry WHERE node_id = $1) x,
          LATERAL generate_series(x.s, x.s + make_interval(secs => $2), interval '15 minutes') AS b
     ON CONFLICT (node_id, bucket_start) DO UPDATE SET marked_at = clock_timestamp()`,
    [nodeId, cap],
  );
  await q.query(
    `INSERT INTO telemetry_rollup_state (node_id, cap_seconds) VALUES ($1, $2)
     ON CONFLICT (node_id) DO UPDATE SET cap_seconds = EXCLUDED.cap_seconds, updated_at = now()`,
    [nodeId, newCapSeconds],
  );
}

/** One computed 15-minute bucket of one field, ready to store. */
export interface BucketRow {
  field: number;
  bucketStart: number;
  agg: FieldAgg;
  extras: PowerExtras | null;
}

const nul = (n: number) => (Number.isFinite(n) ? n : null);
const nulTs = (n: number) => (Number.isFinite(n) ? iso(n) : null);

/**
 * Replaces one node's 15-minute rows of `buckets` by `rows` (buckets without a row are
 * deleted), rebuilds the 1 h and 1 d rows above them from the 15-minute tier, and clears the
 * marks that were not set again since they were read. Run inside a transaction.
 */
export async function writeRefreshedBuckets(q: Queryable, nodeId: string, marks: readonly DirtyMark[], rows: readonly BucketRow[], capSeconds: number): Promise<void> {
  const buckets = marks.map((m) => iso(m.bucketStart));
  await q.query('DELETE FROM telemetry_rollup_15m WHERE node_id = $1 AND field = ANY($3::smallint[]) AND bucket_start = ANY($2::timestamptz[])', [nodeId, buckets, ALL_CODES]);
  if (rows.length > 0) {
    await q.query(
      `INSERT INTO telemetry_rollup_15m (node_id, field, bucket_start, n, sum, min, max, first_v, first_ts, last_v, last_ts, integral, held, exported_kwh, imported_kwh, available_s)
       SELECT $1, * FROM unnest($2::smallint[], $3::timestamptz[], $4::int[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::timestamptz[],
                                $10::float8[], $11::timestamptz[], $12::float8[], $13::float8[], $14::float8[], $15::float8[], $16::float8[])`,
      [
        nodeId,
        rows.map((r) => r.field),
        rows.map((r) => iso(r.bucketStart)),
        rows.map((r) => r.agg.n),
        rows.map((r) => r.agg.sum),
        rows.map((r) => nul(r.agg.min)),
        rows.map((r) => nul(r.agg.max)),
        rows.map((r) => nul(r.agg.firstV)),
        rows.map((r) => nulTs(r.agg.firstTs)),
        rows.map((r) => nul(r.agg.lastV)),
        rows.map((r) => nulTs(r.agg.lastTs)),
        rows.map((r) => r.agg.integral),
        rows.map((r) => r.agg.held),
        rows.map((r) => r.extras?.exportedKwh ?? null),
        rows.map((r) => r.extras?.importedKwh ?? null),
        rows.map((r) => r.extras?.availableS ?? null),
      ],
    );
  }
  const hours = [...new Set(marks.map((m) => Math.floor(m.bucketStart / TIER_MS['1h']) * TIER_MS['1h']))];
  const days = [...new Set(marks.map((m) => Math.floor(m.bucketStart / TIER_MS['1d']) * TIER_MS['1d']))];
  await rebuildCoarse(q, nodeId, 'telemetry_rollup_1h', 'telemetry_rollup_15m', '1 hour', hours);
  await rebuildCoarse(q, nodeId, 'telemetry_rollup_1d', 'telemetry_rollup_1h', '24 hours', days);
  // A mark set again while this run computed (marked_at changed) must survive: compare it.
  await q.query(
    `DELETE FROM telemetry_dirty_buckets d USING unnest($2::timestamptz[], $3::timestamptz[]) AS m(b, at)
     WHERE d.node_id = $1 AND d.bucket_start = m.b AND d.marked_at = m.at`,
    [nodeId, buckets, marks.map((m) => m.markedAt)],
  );
  await q.query(
    `INSERT INTO telemetry_rollup_state (node_id, cap_seconds) VALUES ($1, $2)
     ON CONFLICT (node_id) DO UPDATE SET cap_seconds = EXCLUDED.cap_seconds, updated_at = now()`,
    [nodeId, capSeconds],
  );
}

async function rebuildCoarse(q: Queryable, nodeId: string, target: string, source: string, width: string, starts: number[]): Promise<void> {
  const list = starts.map(iso);
  await q.query(`DELETE FROM ${target} WHERE node_id = $1 AND field = ANY($3::smallint[]) AND bucket_start = ANY($2::timestamptz[])`, [nodeId, list, ALL_CODES]);
  await q.query(
    `INSERT INTO ${target} (node_id, field, bucket_start, n, sum, min, max, first_v, first_ts, last_v, last_ts, integral, held, exported_kwh, imported_kwh, available_s)
     SELECT r.node_id, r.field, c.s, sum(r.n), sum(r.sum), min(r.min), max(r.max),
            (array_agg(r.first_v ORDER BY r.bucket_start) FILTER (WHERE r.n > 0))[1], min(r.first_ts),
            (array_agg(r.last_v ORDER BY r.bucket_start DESC) FILTER (WHERE r.n > 0))[1], max(r.last_ts),
            sum(r.integral), sum(r.held), sum(r.exported_kwh), sum(r.imported_kwh), sum(r.available_s)
     FROM unnest($2::timestamptz[]) AS c(s)
     CROSS JOIN LATERAL (SELECT * FROM ${source} x
                         WHERE x.node_id = $1 AND x.field = ANY($3::smallint[]) AND x.bucket_start >= c.s AND x.bucket_start < c.s + interval '${width}' OFFSET 0) r
     GROUP BY r.node_id, r.field, c.s`,
    [nodeId, list, ALL_CODES],
  );
}
