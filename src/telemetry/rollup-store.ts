/** SQL of rollups: raw reading loads, dirty marks, tier reads and the refresher's writes. */
import type pg from 'pg';
import { withTransaction, type Queryable } from '../db/pool.js';
import { mergeAgg, type FieldAgg, type PeriodPartial, type PowerExtras, type ReadingColumns } from './rollup-compute.js';
import { NUMERIC_FIELDS, type NumericField } from './rollup-fields.js';

/** Rollup tiers above raw, finest first. */
export type Tier = '15m' | '1h' | '2h' | '4h' | '8h' | '1d';

export const TIER_TABLE: Readonly<Record<Tier, string>> = {
  '15m': 'telemetry_rollup_15m',
  '1h': 'telemetry_rollup_1h',
  '2h': 'telemetry_rollup_2h',
  '4h': 'telemetry_rollup_4h',
  '8h': 'telemetry_rollup_8h',
  '1d': 'telemetry_rollup_1d',
};

/** Grid of each tier in ms (buckets aligned on the UTC epoch). */
export const TIER_MS: Readonly<Record<Tier, number>> = { '15m': 900_000, '1h': 3_600_000, '2h': 7_200_000, '4h': 14_400_000, '8h': 28_800_000, '1d': 86_400_000 };

/** Each tier above 15 minutes and the tier it is composed from, in build order. */
const COMPOSED: readonly (readonly [Tier, Tier])[] = [
  ['1h', '15m'],
  ['2h', '1h'],
  ['4h', '2h'],
  ['8h', '4h'],
  ['1d', '8h'],
];

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

/**
 * SQL yielding the parts of `[lo, hi)` (SQL expressions of timestamptz, lo <= hi) that pending rows
 * of telemetry_invalidation_log cover, for any node, as a float8[][] of [start, end] epoch ms (the
 * row's ranges are whole 15-minute buckets; see withLoggedBuckets): a direct or large write logs its
 * buckets there, one row per write, until the refresher turns them into marks
 * (expandInvalidationLog). Read in the same statement as the marks, so that a refresher moving an
 * entry from the log to the marks in between cannot hide it. The buckets are listed in the
 * service, not in SQL: generate_series over unnest has default row estimates (100 × 1,000), so the
 * planner sized a 100,000-row hash for an empty log (3 MB per call) on every query (measured: the
 * hourly 30-day query 14 → 28 ms with the buckets listed in SQL, 11 ms this way).
 */
export function loggedRangesSql(lo: string, hi: string): string {
  return `ARRAY(SELECT ARRAY[(extract(epoch FROM lower(r)) * 1000)::float8, (extract(epoch FROM upper(r)) * 1000)::float8]
    FROM telemetry_invalidation_log l, unnest(l.ranges * tstzmultirange(tstzrange(${lo}, ${hi}))) AS r
    WHERE l.ranges && tstzrange(${lo}, ${hi}))`;
}

/** The 15-minute bucket starts (epoch ms) that `ranges` (from loggedRangesSql) touch, merged into sorted `marks`. */
export function withLoggedBuckets(marks: readonly number[], ranges: readonly (readonly number[])[] | null): number[] {
  if (!ranges || ranges.length === 0) return marks as number[];
  const Q = TIER_MS['15m'];
  const set = new Set(marks);
  for (const [lo, hi] of ranges) for (let b = Math.floor(lo / Q) * Q; b < hi; b += Q) set.add(b);
  return [...set].sort((x, y) => x - y);
}

/**
 * Dirty 15-minute bucket starts of a node in `[lo, hi)` (sorted, epoch ms: its marks and the
 * buckets pending in the invalidation log), and the cap its rollups were built with.
 */
export async function loadDirtyState(q: Queryable, nodeId: string, lo: number, hi: number): Promise<{ dirty: number[]; capSeconds: number | null }> {
  const { rows } = await q.query<{ cap: number | null; dirty: number[]; logged: number[][] }>(
    `SELECT (SELECT cap_seconds FROM telemetry_rollup_state WHERE node_id = $1) AS cap,
            ARRAY(SELECT (extract(epoch FROM bucket_start) * 1000)::float8 FROM telemetry_dirty_buckets
                  WHERE node_id = $1 AND bucket_start >= $2 AND bucket_start < $3 ORDER BY bucket_start) AS dirty,
            ${loggedRangesSql('$2::timestamptz', '$3::timestamptz')} AS logged`,
    [nodeId, iso(lo), iso(Math.max(lo, hi))],
  );
  return { dirty: withLoggedBuckets(rows[0].dirty, rows[0].logged), capSeconds: rows[0].cap };
}

/** A range of one tier's buckets that belongs to output period `idx`. */
export interface TierPiece {
  tier: Tier;
  lo: number;
  hi: number;
  idx: number;
}

/**
 * Which columns a tier read returns besides count, sum, min, max and the time-weighted pieces
 * (integral, held), which every caller needs. Each column costs per row read, so a query reads
 * only what its answer uses.
 */
export interface AggParts {
  /** First and last values (implies `times`). */
  firstLast: boolean;
  /** Times of the first and last readings. */
  times: boolean;
  /** Power extras: exported/imported energy and available seconds. */
  extras: boolean;
}

const ms = (col: string) => `(extract(epoch FROM x.${col}) * 1000)::float8`;

/** The columns of one tier row a read returns (see AggRow); those `parts` leaves out are NULL. First/last values bring their times. */
function rowColumns(parts: AggParts): string {
  const times = parts.times || parts.firstLast;
  return [
    ms('bucket_start'),
    'x.field',
    'x.n',
    'x.sum',
    'x.min',
    'x.max',
    parts.firstLast ? 'x.first_v' : 'NULL',
    times ? ms('first_ts') : 'NULL',
    parts.firstLast ? 'x.last_v' : 'NULL',
    times ? ms('last_ts') : 'NULL',
    'x.integral',
    'x.held',
    ...(parts.extras ? ['x.exported_kwh', 'x.imported_kwh', 'x.available_s'] : ['NULL', 'NULL', 'NULL']),
  ].join(', ');
}

/** A tier row as read: [tier index, bucket start ms, field, n, sum, min, max, first_v, first_ts, last_v, last_ts, integral, held, exported, imported, available]. */
type AggRow = [number, number, number, number, number, number | null, number | null, number | null, number | null, number | null, number | null, number, number, number | null, number | null, number | null];

/**
 * A tier's pieces are read with one range scan when their span holds at most this many times the
 * buckets they cover (plus 64), else with one index probe per bucket. Measured on the query bench's
 * year of Berlin days (p50, same process, interleaved): ratio 2 → 24.7–25.5 ms, 8 → 29 ms, every
 * tier scanned → 40 ms, every tier probed → 27.7 ms.
 */
const DENSE_RATIO = 2;

const statementNames = new Map<string, string>();

/**
 * A name for a tier read's statement text, so each connection parses and plans it once and
 * PostgreSQL may keep a generic plan: the texts differ only by the tiers used and how each is
 * read, a few dozen shapes in all (a query of a year in a whole-hour zone spends as long planning
 * its four-tier statement afresh as executing it).
 */
function statementName(text: string): string {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `vpp_tiers_${statementNames.size}`;
    statementNames.set(text, name);
  }
  return name;
}

/**
 * Reads the rollup rows under `pieces` (any tiers) in one statement and folds them into
 * `partials[idx]`; `fieldIndex` maps a field code to its index in the partial's field list. A
 * field may be null in a partial: its first row is then stored as it is.
 * What `parts` leaves out stays unknown in the partials: first and last values and times NaN
 * (where rollups serve), extras 0.
 *
 * The rows themselves are returned and folded here, not grouped in SQL: with the 2/4/8-hour tiers
 * most pieces are one row, and per-row aggregate transitions in the database cost more than
 * the rows' transfer. Per tier, pieces that cover enough of their span are read with one index
 * range scan over it (see DENSE_RATIO); sparse ones (e.g. the few edge buckets of each local day)
 * by their bucket starts. Each row finds its piece through a slot array over the tier's grid
 * (`-1` between pieces).
 */
export async function addTierAggregates(q: Queryable, nodeId: string, fieldCodes: readonly number[], pieces: readonly TierPiece[], partials: PeriodPartial[], fieldIndex: ReadonlyMap<number, number>, parts: Readonly<AggParts>): Promise<void> {
  if (pieces.length === 0) return;
  const columns = rowColumns(parts);
  const params: unknown[] = [nodeId, fieldCodes];
  const selects: string[] = [];
  const grids: { base: number; g: number; map: Int32Array }[] = [];
  for (const tier of Object.keys(TIER_TABLE) as Tier[]) {
    const mine = pieces.filter((p) => p.tier === tier).sort((a, b) => a.lo - b.lo);
    if (mine.length === 0) continue;
    const g = TIER_MS[tier];
    const base = mine[0].lo;
    const end = mine[mine.length - 1].hi;
    const map = new Int32Array((end - base) / g).fill(-1);
    let covered = 0;
    for (const p of mine) {
      for (let t = p.lo; t < p.hi; t += g) map[(t - base) / g] = p.idx;
      covered += (p.hi - p.lo) / g;
    }
    const k = grids.length;
    grids.push({ base, g, map });
    if (end - base <= (DENSE_RATIO * covered + 64) * g) {
      // Rows between pieces are dropped in the database by their slot (integer arithmetic, far
      // cheaper per row than their transfer); the slot array goes as a literal, which the driver
      // would otherwise escape element by element (thousands for a year of hours).
      params.push(iso(base), iso(end), `{${map.join(',')}}`, base / 1000, g / 1000);
      const n = params.length;
      selects.push(`SELECT ${k}, ${columns} FROM ${TIER_TABLE[tier]} x
        WHERE x.node_id = $1 AND x.field = ANY($2::smallint[]) AND x.bucket_start >= $${n - 4} AND x.bucket_start < $${n - 3}
          AND ($${n - 2}::int[])[((date_part('epoch', x.bucket_start) - $${n - 1}::float8) / $${n}::float8)::int + 1] >= 0`);
    } else {
      const starts: string[] = [];
      for (let i = 0; i < map.length; i++) if (map[i] >= 0) starts.push(iso(base + i * g));
      // As an array literal: the driver would otherwise escape every element. One index probe per
      // bucket: LATERAL with OFFSET 0 keeps that plan whatever the statistics say (a fresh,
      // unanalyzed tier otherwise invites a scan of all of the node's rows).
      params.push(`{${starts.join(',')}}`);
      selects.push(`SELECT ${k}, ${columns} FROM unnest($${params.length}::timestamptz[]) AS s(b)
        CROSS JOIN LATERAL (SELECT * FROM ${TIER_TABLE[tier]} y WHERE y.node_id = $1 AND y.bucket_start = s.b AND y.field = ANY($2::smallint[]) OFFSET 0) x`);
    }
  }
  const text = selects.join('\nUNION ALL\n');
  const { rows } = await q.query({ name: statementName(text), text, values: params, rowMode: 'array' });
  for (const r of rows as AggRow[]) {
    const grid = grids[r[0]];
    const idx = grid.map[(r[1] - grid.base) / grid.g];
    const f = fieldIndex.get(r[2]);
    if (idx === undefined || idx < 0 || f === undefined) continue;
    const part = partials[idx];
    // A field still null takes the row's agg as it is (what merging it into an empty one gives).
    const own = part.fields[f] as FieldAgg | null;
    if (own === null) part.fields[f] = rowAgg(r);
    else mergeAgg(own, rowAgg(r));
    if (r[13] !== null) {
      part.extras.exportedKwh += r[13];
      part.extras.importedKwh += r[14] ?? 0;
      part.extras.availableS += r[15] ?? 0;
    }
  }
}

/**
 * One row as a FieldAgg, built whole (one object literal whose fields are numbers from the start,
 * not an empty agg assigned to afterwards). Values left out of the read (null) are those of an
 * empty agg, so merging the result anywhere equals merging the row.
 */
function rowAgg(r: AggRow): FieldAgg {
  const has = r[3] > 0;
  return {
    n: r[3],
    sum: r[4],
    min: has ? (r[5] as number) : Infinity,
    max: has ? (r[6] as number) : -Infinity,
    firstV: has ? (r[7] ?? NaN) : NaN,
    firstTs: has ? (r[8] ?? Infinity) : Infinity,
    lastV: has ? (r[9] ?? NaN) : NaN,
    lastTs: has ? (r[10] ?? -Infinity) : -Infinity,
    integral: r[11],
    held: r[12],
  };
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

/** Log rows expanded per transaction at most (a direct write's row lists up to ~1,000 nodes). */
const LOG_ROWS_PER_EXPANSION = 50;

/**
 * Turns pending rows of telemetry_invalidation_log into dirty marks, oldest first, each batch in
 * one transaction that also deletes the rows: queries, which read both in one statement, see a
 * bucket as dirty throughout. Marks go in in key order, as the writers insert theirs, so the two
 * cannot deadlock. Returns the log rows expanded.
 */
export async function expandInvalidationLog(pool: pg.Pool, maxBatches = 1000): Promise<number> {
  let done = 0;
  for (let batch = 0; batch < maxBatches; batch++) {
    const n = await withTransaction(pool, (c) => expandInvalidationBatch(c));
    done += n;
    if (n < LOG_ROWS_PER_EXPANSION) break;
  }
  return done;
}

/**
 * The whole invalidation log turned into marks inside the caller's transaction. Retention runs it
 * before it deletes a dropped day's marks, so no pending row can mark that day again later.
 */
export async function expandInvalidationLogIn(c: Queryable): Promise<number> {
  let done = 0;
  for (;;) {
    const n = await expandInvalidationBatch(c);
    done += n;
    if (n < LOG_ROWS_PER_EXPANSION) return done;
  }
}

/**
 * One batch of expandInvalidationLog in the caller's transaction; returns the log rows expanded
 * (fewer than LOG_ROWS_PER_EXPANSION: the log was empty after them).
 */
async function expandInvalidationBatch(c: Queryable): Promise<number> {
  const { rows } = await c.query<{ id: string; marks: string }>(
    'SELECT id::text AS id, marks FROM telemetry_invalidation_log ORDER BY id LIMIT $1 FOR UPDATE',
    [LOG_ROWS_PER_EXPANSION],
  );
  if (rows.length === 0) return 0;
  const byNode = new Map<string, Set<number>>();
  for (const r of rows) {
    for (const entry of JSON.parse(r.marks) as [string, ...number[]][]) {
      let set = byNode.get(entry[0]);
      if (!set) byNode.set(entry[0], (set = new Set()));
      for (let k = 1; k + 1 < entry.length; k += 2) for (let b = entry[k] as number; b < (entry[k + 1] as number); b++) set.add(b);
    }
  }
  const nodes: string[] = [];
  const starts: string[] = [];
  // Byte order of node ids (they are ASCII), then time: the order of every marks insert.
  for (const node of [...byNode.keys()].sort()) {
    for (const b of [...(byNode.get(node) as Set<number>)].sort((x, y) => x - y)) {
      nodes.push(node);
      starts.push(iso(b * TIER_MS['15m']));
    }
  }
  await c.query(
    `INSERT INTO telemetry_dirty_buckets AS d (node_id, bucket_start)
     SELECT node_id, bucket_start FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS m(node_id, bucket_start, k) ORDER BY k
     ON CONFLICT (node_id, bucket_start) DO UPDATE SET marked_at = clock_timestamp()`,
    [nodes, starts],
  );
  await c.query('DELETE FROM telemetry_invalidation_log WHERE id = ANY($1::bigint[])', [rows.map((r) => r.id)]);
  return rows.length;
}

export async function loadRollupCaps(q: Queryable): Promise<Map<string, number>> {
  const { rows } = await q.query<{ node_id: string; cap_seconds: number }>('SELECT node_id, cap_seconds FROM telemetry_rollup_state');
  return new Map(rows.map((r) => [r.node_id, r.cap_seconds]));
}

/**
 * Marks dirty every 15-minute bucket that a reading of the node can hold into under either cap,
 * and records the new cap: used when a node's telemetry interval changed. A reading in bucket
 * [s, s + 15 min) holds until before s + 15 min + cap, so every bucket starting before that is
 * marked (including buckets with no reading of their own that only a hold reaches).
 */
export async function markNodeForCapChange(q: Queryable, nodeId: string, oldCapSeconds: number, newCapSeconds: number): Promise<void> {
  const cap = Math.max(oldCapSeconds, newCapSeconds);
  await q.query(
    `INSERT INTO telemetry_dirty_buckets (node_id, bucket_start)
     SELECT DISTINCT $1::text, b
     FROM (SELECT DISTINCT date_bin('15 minutes', ts, TIMESTAMPTZ '2000-01-01T00:00:00Z') AS s FROM telemetry WHERE node_id = $1) x,
          LATERAL generate_series(x.s, x.s + interval '15 minutes' + make_interval(secs => $2) - interval '1 microsecond', interval '15 minutes') AS b
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
 * deleted), rebuilds the coarser rows above them tier by tier (1 h from 15 min, 2 h from 1 h, …,
 * 1 d from 8 h), and clears the marks that were not set again since they were read. Run inside a
 * transaction.
 */
export async function writeRefreshedBuckets(q: Queryable, nodeId: string, marks: readonly DirtyMark[], rows: readonly BucketRow[], capSeconds: number): Promise<void> {
  const buckets = marks.map((m) => iso(m.bucketStart));
  // The marked buckets and every coarser bucket above them, all deleted in one statement; then the
  // 15-minute rows inserted, and each coarser tier rebuilt from the one below it (which must be
  // complete first: one statement per tier).
  const starts = COMPOSED.map(([tier]) => [...new Set(marks.map((m) => Math.floor(m.bucketStart / TIER_MS[tier]) * TIER_MS[tier]))].map(iso));
  const tiers: Tier[] = ['15m', ...COMPOSED.map(([tier]) => tier)];
  await q.query(
    `WITH ${tiers.map((tier, k) => `d${k} AS (DELETE FROM ${TIER_TABLE[tier]} WHERE node_id = $1 AND field = ANY($2::smallint[]) AND bucket_start = ANY($${k + 3}::timestamptz[]))`).join(', ')}
     SELECT 1`,
    [nodeId, ALL_CODES, buckets, ...starts],
  );
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
  for (let k = 0; k < COMPOSED.length; k++) await composeTier(q, nodeId, COMPOSED[k][0], COMPOSED[k][1], starts[k]);
  // A mark set again while this run computed (marked_at changed) must survive: compare it. And
  // the cap the rows were built with, in the same statement.
  await q.query(
    `WITH marks AS (
       DELETE FROM telemetry_dirty_buckets d USING unnest($2::timestamptz[], $3::timestamptz[]) AS m(b, at)
       WHERE d.node_id = $1 AND d.bucket_start = m.b AND d.marked_at = m.at
     )
     INSERT INTO telemetry_rollup_state (node_id, cap_seconds) VALUES ($1, $4)
     ON CONFLICT (node_id) DO UPDATE SET cap_seconds = EXCLUDED.cap_seconds, updated_at = now()`,
    [nodeId, buckets, marks.map((m) => m.markedAt), capSeconds],
  );
}

/**
 * Inserts the `tier` buckets starting at `list` of one node, composed from the `source` tier's rows
 * under them. Floating-point sums add the children in time order (ORDER BY bucket_start), the order
 * in which queries fold the same children when they compute a unit from below (query-engine.ts),
 * so a row and its computation from raw readings are the same doubles.
 */
async function composeTier(q: Queryable, nodeId: string, tier: Tier, source: Tier, list: string[]): Promise<void> {
  await q.query(
    `INSERT INTO ${TIER_TABLE[tier]} (node_id, field, bucket_start, n, sum, min, max, first_v, first_ts, last_v, last_ts, integral, held, exported_kwh, imported_kwh, available_s)
     SELECT r.node_id, r.field, c.s, sum(r.n), sum(r.sum ORDER BY r.bucket_start), min(r.min), max(r.max),
            (array_agg(r.first_v ORDER BY r.bucket_start) FILTER (WHERE r.n > 0))[1], min(r.first_ts),
            (array_agg(r.last_v ORDER BY r.bucket_start DESC) FILTER (WHERE r.n > 0))[1], max(r.last_ts),
            sum(r.integral ORDER BY r.bucket_start), sum(r.held ORDER BY r.bucket_start), sum(r.exported_kwh ORDER BY r.bucket_start),
            sum(r.imported_kwh ORDER BY r.bucket_start), sum(r.available_s ORDER BY r.bucket_start)
     FROM unnest($2::timestamptz[]) AS c(s)
     CROSS JOIN LATERAL (SELECT * FROM ${TIER_TABLE[source]} x
                         WHERE x.node_id = $1 AND x.field = ANY($3::smallint[]) AND x.bucket_start >= c.s AND x.bucket_start < c.s + make_interval(secs => ${TIER_MS[tier] / 1000}) OFFSET 0) r
     GROUP BY r.node_id, r.field, c.s`,
    [nodeId, list, ALL_CODES],
  );
}
