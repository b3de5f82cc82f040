import type pg from 'pg';
import type { Logger } from 'pino';
import type { Db } from '../db/pool.js';
import { unavailable } from '../http/errors.js';
import { FLAG_CORRECTED, NUMERIC_FIELDS, sameReading, type IngestRow } from './validate.js';

/** A node whose latest reading changed in a committed write. */
export interface LatestChange {
  nodeId: string;
  /** Measurement time of the new latest reading, epoch ms. */
  ts: number;
  /** Arrival time of that reading, epoch ms. */
  receivedAt: number;
  /** `ts` and `receivedAt` as RFC 3339 UTC with milliseconds (isoUtc). */
  timestampIso: string;
  receivedAtIso: string;
  /** The reading in API shape (camelCase; nodeId and timestamp included) as JSON text, as written to telemetry_latest. */
  readingJson: string;
  /** telemetry_latest.version after the change (grows per node in commit order). */
  version: number;
}

/** Half-open range [from, to) of measurement times (epoch ms) written for one node in one commit. */
export interface ChangedRange {
  nodeId: string;
  from: number;
  to: number;
}

/** What one write did. `outcome[i]` is OUTCOME_STORED or OUTCOME_DUPLICATE for rows[i]. */
export interface WriteResult {
  outcome: Uint8Array;
  stored: number;
  duplicates: number;
  /** Stored readings that replaced an existing, different reading. */
  corrected: number;
  latest: LatestChange[];
  changed: ChangedRange[];
  /** True when the rows went straight into telemetry (every key was new). */
  direct: boolean;
  /** True when a direct write met an existing key and the rows were written on the staged path. */
  directConflict: boolean;
}

export const OUTCOME_STORED = 0;
export const OUTCOME_DUPLICATE = 1;

const COLS = NUMERIC_FIELDS.map(([, c]) => c);
const API_NAMES = NUMERIC_FIELDS.map(([api]) => api);
const VALUE_COLS = [...COLS, 'health_status', 'quality', 'extra'];
const ROW_COLS = ['node_id', 'ts', 'received_at', ...VALUE_COLS, 'flags'].join(', ');
const BUCKET_MS = 15 * 60_000;

// Per-connection staging table for large writes, in telemetry's own row shape; rows vanish at
// commit or rollback, so a failed write leaves nothing behind. Stated in every large write's
// round trip (a table created in a transaction that rolled back is gone again).
const STAGE_DDL = `CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (LIKE telemetry) ON COMMIT DELETE ROWS`;
const COPY_SQL = `COPY telemetry_stage (${ROW_COLS}) FROM STDIN (FORMAT binary)`;
// Rows whose keys are all newer than anything known of their node go straight into telemetry: no
// staging, no conflict handling. Were a key there after all, the unique key fails the COPY and the
// write is redone on the staged path, so the guess decides only the speed, never the outcome.
const DIRECT_COPY_SQL = `COPY telemetry (${ROW_COLS}) FROM STDIN (FORMAT binary)`;

const EPOCH_MS = (e: string) => `(extract(epoch FROM ${e}) * 1000)::float8`;

/**
 * Upsert of `source` rows into telemetry. Sorted by key (byte order, the order the writer sends
 * them in, so the sort finds them presorted) so concurrent writers lock rows in the same order and
 * cannot deadlock. An identical re-send changes nothing and is not returned; a replacement sets
 * FLAG_CORRECTED on the row, which is how it is told from an insert. Last write wins by arrival:
 * a different version that arrived before the stored one of its key (an async reading applied
 * after a later sync write of the key, or a race between instances) keeps the stored values, but
 * is returned, flagged corrected, as applying the readings in arrival order would have it: it was
 * stored, and the later one replaced it. So it counts as stored and corrected, not as a duplicate.
 */
function upsertSql(source: string): string {
  const later = 't.received_at <= EXCLUDED.received_at';
  return `INSERT INTO telemetry AS t (${ROW_COLS}) SELECT ${ROW_COLS} FROM ${source} ORDER BY node_id COLLATE "C", ts
  ON CONFLICT (node_id, ts) DO UPDATE SET received_at = CASE WHEN ${later} THEN EXCLUDED.received_at ELSE t.received_at END,
    ${VALUE_COLS.map((c) => `${c} = CASE WHEN ${later} THEN EXCLUDED.${c} ELSE t.${c} END`).join(', ')},
    flags = CASE WHEN ${later} THEN EXCLUDED.flags ELSE t.flags END | ${FLAG_CORRECTED}
  WHERE (${VALUE_COLS.map((c) => `t.${c}`).join(', ')}) IS DISTINCT FROM (${VALUE_COLS.map((c) => `EXCLUDED.${c}`).join(', ')})
  RETURNING t.node_id, t.ts, t.flags`;
}

/**
 * telemetry_latest from the writer's candidates (per node, the final version of its newest key in
 * the write): moves forward in measurement time only; a changed reading at the same time replaces
 * it if it arrived no earlier (as in telemetry); an identical one changes nothing. Independent of
 * the telemetry rows, so it can run in the same statement as their upsert.
 */
export function latestSql(param: string): string {
  return `INSERT INTO telemetry_latest AS l (node_id, ts, received_at, reading)
  SELECT e->>0, (e->>1)::timestamptz, (e->>2)::timestamptz, e->3 FROM jsonb_array_elements(${param}::jsonb) e
  ORDER BY (e->>0) COLLATE "C"
  ON CONFLICT (node_id) DO UPDATE SET ts = EXCLUDED.ts, received_at = EXCLUDED.received_at, reading = EXCLUDED.reading,
    version = nextval('telemetry_latest_version_seq')
  WHERE EXCLUDED.ts > l.ts OR (EXCLUDED.ts = l.ts AND EXCLUDED.received_at >= l.received_at AND EXCLUDED.reading IS DISTINCT FROM l.reading)
  RETURNING l.node_id, l.version`;
}

/** Per reading key: identical re-sends and corrections (migration 013); `sources` yield (node_id, ts, dups, corr). */
function qualitySql(sources: string[]): string {
  return `INSERT INTO telemetry_quality_keys AS q (node_id, ts, duplicates, corrected)
  SELECT node_id, ts, sum(dups), sum(corr) FROM (${sources.join('\n    UNION ALL ')}) x
  GROUP BY 1, 2 ORDER BY node_id COLLATE "C", ts
  ON CONFLICT (node_id, ts) DO UPDATE SET duplicates = q.duplicates + EXCLUDED.duplicates, corrected = q.corrected + EXCLUDED.corrected`;
}

const CORRECTIONS_FROM_INS = `SELECT node_id, ts, 0::bigint AS dups, 1::bigint AS corr FROM ins WHERE flags & ${FLAG_CORRECTED} <> 0`;
const FLUSH_DUPS = (param: string) => `SELECT e->>0 AS node_id, (e->>1)::timestamptz AS ts, (e->>2)::bigint AS dups, 0::bigint AS corr FROM jsonb_array_elements(${param}::jsonb) e`;
const DUPS_FROM_DUP = `SELECT node_id, ts, 1::bigint, 0::bigint FROM dup`;

/**
 * One row of telemetry_invalidation_log (migration 012) from the write's invalidation ranges and
 * per-node bucket runs (see invalidationOf); `where` may gate it.
 */
export const logInsertSql = (ranges: string, marks: string, where = '') =>
  `INSERT INTO telemetry_invalidation_log (ranges, marks) SELECT ${ranges}::tstzmultirange, ${marks} ${where}`;

/**
 * Large writes, round 0, after COPY into telemetry_stage (in the same round trip, its parameters
 * as literals). Params: $1 invalidation ranges of every staged row, $2 latest candidates, $3
 * identical copies inside the write, $4 staged row count, $5 the per-node bucket runs (see
 * invalidationOf). When every staged row was written, their buckets are logged here in one row of
 * telemetry_invalidation_log, as a direct write does. Otherwise `dup` lists the staged rows the
 * upsert did not write (identical re-sends; see upsertSql), as
 * SMALL_SQL does, counts them per key and returns them, and the writer logs the buckets of the
 * rest (LOG_SQL). Only rows the upsert returned were written: their arrival stamps prove nothing,
 * since copies split over two flushes, or the same batch stamped alike by two instances, carry
 * the same stamp as the stored row. The one-time filter skips the anti-join when all were written.
 */
const LARGE_SQL = `WITH ins AS (
  ${upsertSql('telemetry_stage')}
), dup AS (
  SELECT node_id, ts FROM telemetry_stage
  WHERE (SELECT count(*) FROM ins) < $4::int AND (node_id, ts) NOT IN (SELECT node_id, ts FROM ins)
), lat AS (
  ${latestSql('$2')}
), logged AS (
  ${logInsertSql('$1', '$5', 'WHERE (SELECT count(*) FROM ins) = $4::int')}
), q AS (
  ${qualitySql([CORRECTIONS_FROM_INS, FLUSH_DUPS('$3'), DUPS_FROM_DUP])}
)
SELECT (SELECT count(*) FROM ins)::int AS written,
  (SELECT count(*) FROM ins WHERE flags & ${FLAG_CORRECTED} <> 0)::int AS corrected,
  (SELECT coalesce(json_agg(json_build_array(node_id, version)), '[]') FROM lat) AS latest,
  (SELECT coalesce(json_agg(json_build_array(node_id, ${EPOCH_MS('ts')})), '[]') FROM dup) AS dups`;

/** Run only when a large write wrote fewer rows than it staged: the log row of the rows it wrote. */
const LOG_SQL = logInsertSql('$1', '$2');

/**
 * Everything for a small write (or one later round) in one statement, rows as JSON: $1 rows,
 * $2 dirty buckets per row (node_id, ts, bucket_start; only those of rows actually written are
 * marked), $3 latest candidates, $4 identical copies inside the write. Outside a transaction it is
 * its own transaction: one round trip per write. The membership tests are NOT IN subqueries, which
 * PostgreSQL hashes, so the statement stays linear whatever the plan's row estimates.
 */
const SMALL_SQL = `WITH s AS MATERIALIZED (
  SELECT e->>0 AS node_id, (e->>1)::timestamptz AS ts, (e->>2)::timestamptz AS received_at,
    ${COLS.map((c, k) => `(e->>${k + 3})::float8 AS ${c}`).join(', ')},
    e->>${COLS.length + 3} AS health_status, e->>${COLS.length + 4} AS quality, (e->>${COLS.length + 5})::jsonb AS extra, (e->>${COLS.length + 6})::smallint AS flags
  FROM jsonb_array_elements($1::jsonb) e
), ins AS (
  ${upsertSql('s')}
), dup AS (
  SELECT node_id, ts FROM s WHERE (node_id, ts) NOT IN (SELECT node_id, ts FROM ins)
), lat AS (
  ${latestSql('$3')}
), dirty AS (
  INSERT INTO telemetry_dirty_buckets AS d (node_id, bucket_start)
  SELECT node_id, bucket_start FROM (
    SELECT DISTINCT e->>0 AS node_id, (e->>2)::timestamptz AS bucket_start FROM jsonb_array_elements($2::jsonb) e
    WHERE (e->>0, (e->>1)::timestamptz) NOT IN (SELECT node_id, ts FROM dup)) b
  ORDER BY node_id COLLATE "C", bucket_start
  ON CONFLICT (node_id, bucket_start) DO UPDATE SET marked_at = clock_timestamp()
), q AS (
  ${qualitySql([CORRECTIONS_FROM_INS, FLUSH_DUPS('$4'), DUPS_FROM_DUP])}
)
SELECT (SELECT count(*) FROM ins WHERE flags & ${FLAG_CORRECTED} <> 0)::int AS corrected,
  (SELECT coalesce(json_agg(json_build_array(node_id, version)), '[]') FROM lat) AS latest,
  (SELECT coalesce(json_agg(json_build_array(node_id, ${EPOCH_MS('ts')})), '[]') FROM dup) AS dups`;

/**
 * After a direct COPY, which wrote every row as new: $1 the write's invalidation ranges (see
 * invalidationOf), $2 latest candidates, $3 identical copies inside the write, $4 the per-node
 * bucket runs (sent as literals in writeDirect's one query). No corrections are possible. The
 * buckets are logged in one row of telemetry_invalidation_log rather than marked one by one
 * (migration 012).
 */
const DIRECT_SQL = `WITH lat AS (
  ${latestSql('$2')}
), logged AS (
  ${logInsertSql('$1', '$4')}
), q AS (
  ${qualitySql([FLUSH_DUPS('$3')])}
)
SELECT (SELECT coalesce(json_agg(json_build_array(node_id, version)), '[]') FROM lat) AS latest`;

/** SQLSTATE of a unique violation: a direct COPY met a key that was there after all. */
const UNIQUE_VIOLATION = '23505';

/** Memoised ISO strings: a write repeats the same few measurement minutes, arrival stamps and buckets. */
class IsoCache {
  private readonly ms = new Map<number, string>();
  private readonly us = new Map<number, string>();

  /** RFC 3339 UTC, milliseconds. */
  iso(ms: number): string {
    let s = this.ms.get(ms);
    if (s === undefined) {
      s = new Date(ms).toISOString();
      this.ms.set(ms, s);
    }
    return s;
  }

  /** RFC 3339 UTC with microseconds, from epoch ms with a fraction (arrival stamps are unique per µs). */
  micros(ms: number): string {
    let s = this.us.get(ms);
    if (s === undefined) {
      const whole = Math.floor(ms);
      const micros = Math.min(999, Math.round((ms - whole) * 1000));
      s = `${new Date(whole).toISOString().slice(0, 23)}${String(micros).padStart(3, '0')}Z`;
      this.us.set(ms, s);
    }
    return s;
  }
}

/** How a write applies its rows, decided in memory before any round trip. */
interface Plan {
  rows: readonly IngestRow[];
  outcome: Uint8Array;
  /** Identical copies of an earlier row of the same write. */
  duplicates: number;
  /** Row indices per node, nodes in byte order, each sorted by (ts, arrival). */
  groups: number[][];
  /** Row indices per round, sorted by (nodeId, ts): a key's later different versions go to later rounds. */
  rounds: number[][];
  /** Per node, the row that is its newest reading once the write is applied. */
  latest: number[];
  /** Identical copies inside the write per `${nodeId}\0${ts}` (ts in epoch ms). */
  flushDups: Map<string, number>;
}

/**
 * Rows are taken in arrival order: a later identical copy of a key is a duplicate; a later
 * different version goes into the next round, applied after the earlier one, so counts are
 * exactly those of applying the readings one by one (last write wins).
 */
function planWrite(rows: readonly IngestRow[]): Plan {
  const n = rows.length;
  const outcome = new Uint8Array(n);
  const byNode = new Map<string, number[]>();
  for (let i = 0; i < n; i++) {
    const id = rows[i].nodeId;
    const list = byNode.get(id);
    if (list) list.push(i);
    else byNode.set(id, [i]);
  }
  const nodes = [...byNode.keys()].sort();
  const groups: number[][] = [];
  const rounds: number[][] = [[]];
  const latest: number[] = [];
  const flushDups = new Map<string, number>();
  let duplicates = 0;
  for (const id of nodes) {
    const idx = byNode.get(id) as number[];
    let sorted = true;
    for (let k = 1; k < idx.length && sorted; k++) if (rows[idx[k]].ts < rows[idx[k - 1]].ts) sorted = false;
    if (!sorted) idx.sort((a, b) => rows[a].ts - rows[b].ts || a - b);
    groups.push(idx);
    let kept = -1;
    let round = 0;
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k];
      if (kept >= 0 && rows[kept].ts === rows[i].ts) {
        if (sameReading(rows[kept], rows[i])) {
          outcome[i] = OUTCOME_DUPLICATE;
          duplicates++;
          const key = `${id}\u0000${rows[i].ts}`;
          flushDups.set(key, (flushDups.get(key) ?? 0) + 1);
          continue;
        }
        round++;
      } else round = 0;
      (rounds[round] ??= []).push(i);
      kept = i;
    }
    latest.push(kept);
  }
  return { rows, outcome, duplicates, groups, rounds, latest, flushDups };
}

/** The reading in API shape as JSON text (absent fields omitted), as telemetry_latest keeps it. */
function readingJson(r: IngestRow, iso: IsoCache): string {
  let s = `{"nodeId":${JSON.stringify(r.nodeId)},"timestamp":"${iso.iso(r.ts)}"`;
  const v = r.values;
  for (let k = 0; k < v.length; k++) if (v[k] !== null) s += `,"${API_NAMES[k]}":${v[k]}`;
  if (r.healthStatus !== null) s += `,"healthStatus":${JSON.stringify(r.healthStatus)}`;
  if (r.quality !== null) s += `,"quality":${JSON.stringify(r.quality)}`;
  if (r.extra !== null) s += `,"extra":${r.extra}`;
  return `${s}}`;
}

// JSON parameters are arrays of positional arrays, read as jsonb with jsonb_array_elements: parsed
// once, after which each field is an O(1) lookup (on json, every ->> re-scans the element's text:
// measured 25-40% more database time per row). Positional arrays beat json_to_recordset, which
// re-parses nested objects slowly.

/** [[nodeId, ts, receivedAt, reading]] of the latest candidates; `texts` gets each reading's JSON, in p.latest order. */
function latestJson(p: Plan, iso: IsoCache, texts: string[]): string {
  const parts: string[] = [];
  for (const i of p.latest) {
    const r = p.rows[i];
    const reading = readingJson(r, iso);
    texts.push(reading);
    parts.push(`[${JSON.stringify(r.nodeId)},"${iso.iso(r.ts)}","${iso.micros(r.receivedAt)}",${reading}]`);
  }
  return `[${parts.join(',')}]`;
}

/** [[nodeId, ts, copies]] of identical copies inside the write. */
function flushDupsJson(p: Plan, iso: IsoCache): string {
  const parts: string[] = [];
  for (const [key, count] of p.flushDups) {
    const sep = key.indexOf('\u0000');
    parts.push(`[${JSON.stringify(key.slice(0, sep))},"${iso.iso(Number(key.slice(sep + 1)))}",${count}]`);
  }
  return `[${parts.join(',')}]`;
}

/**
 * The 15-minute buckets (epoch-aligned, UTC) a reading holds into, as bucket numbers (epoch ms /
 * BUCKET_MS), half-open: every bucket overlapping [ts, ts + 3 × telemetryIntervalSeconds).
 */
function holdBuckets(r: HoldingReading): [number, number] {
  return [Math.floor(r.ts / BUCKET_MS), Math.ceil((r.ts + 3 * r.intervalS * 1000) / BUCKET_MS)];
}

/** Bucket numbers (epoch ms / BUCKET_MS) as an ISO time. */
const bucketIso = (b: number, iso: Pick<IsoCache, 'iso'>) => iso.iso(b * BUCKET_MS);

/** What a reading's hold buckets depend on: its node, measurement time and interval. */
export type HoldingReading = Pick<IngestRow, 'nodeId' | 'ts' | 'intervalS'>;

/** The written rows of `idx` (sorted by node, ts) as one invalidation-log entry (invalidationEntry). */
function invalidationOf(p: Plan, idx: readonly number[], iso: IsoCache): { ranges: string; marks: string } {
  const written: IngestRow[] = [];
  for (const i of idx) if (p.outcome[i] !== OUTCOME_DUPLICATE) written.push(p.rows[i]);
  return invalidationEntry(written, iso);
}

/**
 * One row of telemetry_invalidation_log for `rows` (sorted by node, then time): per node the runs of
 * 15-minute bucket numbers its readings hold into (holdBuckets) as JSON (`marks`), and the union
 * over all nodes as a tstzmultirange literal (`ranges`, '{}' for no rows).
 */
export function invalidationEntry(rows: readonly HoldingReading[], iso: Pick<IsoCache, 'iso'> = { iso: (ms) => new Date(ms).toISOString() }): { ranges: string; marks: string } {
  const parts: string[] = [];
  const all: [number, number][] = [];
  let node = '';
  let runs: number[] = [];
  const close = () => {
    if (runs.length === 0) return;
    parts.push(`[${JSON.stringify(node)},${runs.join(',')}]`);
    for (let k = 0; k < runs.length; k += 2) all.push([runs[k], runs[k + 1]]);
  };
  for (const r of rows) {
    if (r.nodeId !== node) {
      close();
      node = r.nodeId;
      runs = [];
    }
    const [s, e] = holdBuckets(r);
    const n = runs.length;
    if (n > 0 && s <= runs[n - 1]) {
      if (e > runs[n - 1]) runs[n - 1] = e;
    } else runs.push(s, e);
  }
  close();
  all.sort((a, b) => a[0] - b[0]);
  const merged: string[] = [];
  let lo = NaN;
  let hi = NaN;
  for (const [s, e] of all) {
    if (s <= hi) {
      if (e > hi) hi = e;
      continue;
    }
    if (!Number.isNaN(lo)) merged.push(`[${bucketIso(lo, iso)},${bucketIso(hi, iso)})`);
    lo = s;
    hi = e;
  }
  if (!Number.isNaN(lo)) merged.push(`[${bucketIso(lo, iso)},${bucketIso(hi, iso)})`);
  return { ranges: `{${merged.join(',')}}`, marks: `[${parts.join(',')}]` };
}

/** [[nodeId, ts, bucketStart]] per row for SMALL_SQL, which keeps the buckets of rows actually written. */
function rowMarksJson(p: Plan, idx: readonly number[], iso: IsoCache): string {
  const parts: string[] = [];
  for (const i of idx) {
    const r = p.rows[i];
    const [s, e] = holdBuckets(r);
    const head = `[${JSON.stringify(r.nodeId)},"${iso.iso(r.ts)}","`;
    for (let b = s; b < e; b++) parts.push(`${head}${bucketIso(b, iso)}"]`);
  }
  return `[${parts.join(',')}]`;
}

/** Rows in telemetry column order; `extra` as a JSON string (so a JSON null is an SQL NULL). */
function rowsJson(p: Plan, idx: readonly number[], iso: IsoCache): string {
  const parts: string[] = [];
  for (const i of idx) {
    const r = p.rows[i];
    let o = `[${JSON.stringify(r.nodeId)},"${iso.iso(r.ts)}","${iso.micros(r.receivedAt)}"`;
    for (let k = 0; k < COLS.length; k++) o += r.values[k] === null ? ',null' : `,${r.values[k]}`;
    o += `,${r.healthStatus === null ? 'null' : JSON.stringify(r.healthStatus)},${r.quality === null ? 'null' : JSON.stringify(r.quality)}`;
    parts.push(`${o},${r.extra === null ? 'null' : JSON.stringify(r.extra)},${r.flags}]`);
  }
  return `[${parts.join(',')}]`;
}

/** Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC). */
const PG_EPOCH_US = 946_684_800_000_000;
const COPY_HEADER = Buffer.concat([Buffer.from('PGCOPY\n', 'latin1'), Buffer.from([0xff, 0x0d, 0x0a, 0x00]), Buffer.alloc(8)]);
const COPY_FIELDS = 3 + COLS.length + 4;
const COPY_CHUNK = 256 * 1024;

/**
 * UTF-8 bytes of the strings a COPY repeats (node ids, health and quality values), kept across
 * writes; cleared whole when it grows past its bound.
 */
const textBytes = new Map<string, Uint8Array>();
const TEXT_BYTES_MAX = 50_000;

function bytesOf(s: string): Uint8Array {
  let b = textBytes.get(s);
  if (b === undefined) {
    if (textBytes.size >= TEXT_BYTES_MAX) textBytes.clear();
    b = Buffer.from(s, 'utf8');
    textBytes.set(s, b);
  }
  return b;
}

/**
 * Binary COPY of telemetry rows: numbers and times go as their 8-byte binary forms, so neither
 * side formats or parses decimal text (the bulk of a text COPY's cost for these rows). Written
 * through a DataView, with repeated strings' bytes cached: measured 1.5–2.5 → 0.35–0.65 µs per
 * row against Buffer's write methods and a UTF-8 encode of every string (same bytes).
 */
class BinaryCopyEncoder {
  private buf = Buffer.allocUnsafe(COPY_CHUNK);
  private dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  private pos = 0;
  readonly chunks: Buffer[] = [];

  constructor() {
    COPY_HEADER.copy(this.buf, 0);
    this.pos = COPY_HEADER.length;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.chunks.push(this.buf.subarray(0, this.pos));
    this.buf = Buffer.allocUnsafe(Math.max(COPY_CHUNK, n));
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.pos = 0;
  }

  private text(s: string | null): void {
    if (s === null) {
      this.dv.setInt32(this.pos, -1);
      this.pos += 4;
      return;
    }
    const b = bytesOf(s);
    this.dv.setInt32(this.pos, b.length);
    this.buf.set(b, this.pos + 4);
    this.pos += 4 + b.length;
  }

  /** timestamptz: microseconds since 2000-01-01 UTC as int64. */
  private time(us: number): void {
    const v = us - PG_EPOCH_US;
    const hi = Math.floor(v / 4294967296);
    const dv = this.dv;
    dv.setInt32(this.pos, 8);
    dv.setInt32(this.pos + 4, hi);
    dv.setUint32(this.pos + 8, v - hi * 4294967296);
    this.pos += 12;
  }

  row(r: IngestRow): void {
    const extraLen = r.extra === null ? 0 : 3 * r.extra.length + 5;
    this.ensure(2 + COPY_FIELDS * 4 + 3 * r.nodeId.length + 16 + COLS.length * 8 + 64 + extraLen + 2);
    const dv = this.dv;
    dv.setInt16(this.pos, COPY_FIELDS);
    this.pos += 2;
    this.text(r.nodeId);
    this.time(r.ts * 1000);
    this.time(Math.round(r.receivedAt * 1000));
    const v = r.values;
    let pos = this.pos;
    for (let k = 0; k < v.length; k++) {
      const x = v[k];
      if (x === null) {
        dv.setInt32(pos, -1);
        pos += 4;
      } else {
        dv.setInt32(pos, 8);
        // -0 is stored as 0, as the text paths do.
        dv.setFloat64(pos + 4, x === 0 ? 0 : x);
        pos += 12;
      }
    }
    this.pos = pos;
    this.text(r.healthStatus);
    this.text(r.quality);
    if (r.extra === null) {
      dv.setInt32(this.pos, -1);
      this.pos += 4;
    } else {
      // jsonb's binary form: a version byte, then the JSON text.
      const n = this.buf.write(r.extra, this.pos + 5, 'utf8');
      dv.setInt32(this.pos, n + 1);
      dv.setUint8(this.pos + 4, 1);
      this.pos += 5 + n;
    }
    dv.setInt32(this.pos, 2);
    dv.setInt16(this.pos + 4, r.flags);
    this.pos += 6;
  }

  end(): Buffer[] {
    this.ensure(2);
    this.dv.setInt16(this.pos, -1);
    this.pos += 2;
    this.chunks.push(this.buf.subarray(0, this.pos));
    return this.chunks;
  }
}

/** Marks rows of `idx` whose key is in `keys` ([nodeId, ts ms] pairs) as duplicates; returns how many. */
function markDuplicates(p: Plan, idx: readonly number[], keys: [string, number][]): number {
  if (keys.length === 0) return 0;
  const set = new Set(keys.map(([id, ts]) => `${id}\u0000${ts}`));
  let found = 0;
  for (const i of idx) {
    if (set.has(`${p.rows[i].nodeId}\u0000${p.rows[i].ts}`)) {
      p.outcome[i] = OUTCOME_DUPLICATE;
      found++;
    }
  }
  return found;
}

/**
 * Up to this many rows (and one round), a write is one statement with its rows as JSON and no
 * explicit transaction: one round trip. Larger writes COPY into the staging table.
 */
export const SMALL_WRITE_ROWS = 1000;

/**
 * Starts a multi-statement write transaction. Statements are prepared once per connection, so
 * their plans must suit any staged size: a nested loop over thousands of rows would be quadratic,
 * hash joins are linear at every size; and the disabled-node cost penalty must not trigger JIT.
 * One round trip; the settings end with the transaction.
 */
export const BEGIN_WRITE = 'BEGIN; SET LOCAL enable_nestloop = off; SET LOCAL jit = off';

/** True when the plan is one statement, which can be its own transaction. */
function isSingleStatement(p: Plan, smallRows: number): boolean {
  return p.rounds.length === 1 && p.rounds[0].length <= smallRows;
}

/** What a plan's statements share: the write's ISO cache, latest candidates and in-write copies (as parameters). */
interface WriteParams {
  iso: IsoCache;
  latest: string;
  dups: string;
}

/**
 * A direct write (one round, every key new as far as the caller knows), a whole transaction in
 * one round trip (OneTripCopy): BEGIN, the rows COPYed straight into telemetry, latest values, the
 * invalidation-log row and in-write copies in one statement (DIRECT_SQL, its parameters as
 * literals), COMMIT. A key already there fails the COPY with a unique violation, which leaves the
 * connection in the failed transaction (the caller rolls back) and the caller redoes the write on
 * the staged path. Returns the latest versions.
 *
 * Round trips are what a write's time is made of here: a reply waits for the event loop, which
 * spends milliseconds at a time parsing and validating the next request bodies. Measured in the
 * ingestion bench (b): five round trips per flush (BEGIN, the COPY's start and end, DIRECT_SQL,
 * COMMIT) left PostgreSQL without a running flush ~17 % of the time.
 */
async function writeDirect(client: pg.PoolClient | pg.Client, p: Plan, w: WriteParams): Promise<[string, number][]> {
  if (p.rounds.length !== 1) throw new Error('writeDirect: a direct write has one round');
  const idx = p.rounds[0];
  const inv = invalidationOf(p, idx, w.iso);
  const sql = withLiterals(DIRECT_SQL, [inv.ranges, w.latest, w.dups, inv.marks]);
  const out = await oneTrip(client, `BEGIN; ${DIRECT_COPY_SQL}; ${sql}; COMMIT`, p, idx);
  // Cannot happen without an error first; checked so that a write is never reported on less.
  if (out.lastTag !== 'COMMIT') throw new Error(`direct write ended with ${out.lastTag}`);
  return JSON.parse(out.rows[0][0] as string) as [string, number][];
}

/**
 * Runs `text`, a simple-protocol query with one COPY FROM STDIN among its statements, with the
 * rows `idx` of `p` as the COPY's binary data, in one round trip (OneTripCopy); checks that the
 * COPY took every row.
 */
async function oneTrip(client: pg.PoolClient | pg.Client, text: string, p: Plan, idx: readonly number[]): Promise<TripResult> {
  const enc = new BinaryCopyEncoder();
  for (const i of idx) enc.row(p.rows[i]);
  const trip = new OneTripCopy(text, enc.end());
  client.query(trip as unknown as pg.QueryConfig);
  const out = await trip.done;
  if (out.copied !== idx.length) throw new Error(`COPY took ${out.copied} of ${idx.length} rows`);
  return out;
}

/** `sql` with its parameters $1…$n replaced by literals of `values` (for a simple-protocol query). */
function withLiterals(sql: string, values: readonly string[]): string {
  return sql.replace(/\$([1-9])\b/g, (_, k: string) => sqlLiteral(values[Number(k) - 1]));
}

/**
 * An SQL string literal of `s`, whatever the server's standard_conforming_strings (as pg's
 * escapeLiteral writes it, but with two native replaceAll calls: pg's loops per character, 3.7–4.1
 * ms for a 130 kB latest-candidates text against 0.003 ms, measured).
 */
function sqlLiteral(s: string): string {
  const q = s.replaceAll("'", "''");
  return s.includes('\\') ? ` E'${q.replaceAll('\\', '\\\\')}'` : `'${q}'`;
}

interface PgConnection {
  stream: { cork(): void; uncork(): void; write(b: Buffer): boolean };
  query(text: string): void;
}

interface TripResult {
  /** Rows of the COPY ("COPY n"), -1 if none completed. */
  copied: number;
  /** DataRows of the query's statements, text format, in order. */
  rows: (string | null)[][];
  /** Command tag of the last statement. */
  lastTag: string;
}

/**
 * One simple-protocol query whose text holds a COPY FROM STDIN among other statements, written
 * to the socket together with all of the COPY's data (a pg "submittable", as pg-copy-streams is).
 * The server reads the data when it reaches the COPY; were an earlier statement or the COPY to
 * fail, the server skips the rest of the query and ignores the COPY data still arriving, as the
 * protocol specifies for a failed COPY. One round trip instead of one per statement plus one for
 * the COPY's start. Settles on the first error (pg then no longer routes the query's messages
 * here) or on ReadyForQuery.
 */
class OneTripCopy {
  readonly done: Promise<TripResult>;
  private resolve!: (v: TripResult) => void;
  private reject!: (e: unknown) => void;
  private copied = -1;
  private lastTag = '';
  private readonly rows: (string | null)[][] = [];

  constructor(
    readonly text: string,
    private readonly chunks: Buffer[],
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  /** pg replaces this with its query_timeout timer's clearing when that option is set; called once the query ends. */
  callback(): void {}

  submit(connection: PgConnection): void {
    const s = connection.stream;
    s.cork();
    connection.query(this.text);
    for (const c of this.chunks) {
      const head = Buffer.allocUnsafe(5);
      head[0] = 0x64;
      head.writeUInt32BE(c.length + 4, 1);
      s.write(head);
      s.write(c);
    }
    s.write(Buffer.from([0x63, 0, 0, 0, 4]));
    s.uncork();
  }

  handleRowDescription(): void {}
  handleDataRow(msg: { fields: (string | null)[] }): void {
    this.rows.push(msg.fields);
  }
  handleCommandComplete(msg: { text: string }): void {
    this.lastTag = msg.text;
    const m = /^COPY (\d+)$/.exec(msg.text);
    if (m) this.copied = Number(m[1]);
  }
  handleCopyInResponse(): void {}
  handleCopyData(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}
  handleError(err: unknown): void {
    this.callback();
    this.reject(err);
  }
  handleReadyForQuery(): void {
    this.callback();
    this.resolve({ copied: this.copied, rows: this.rows, lastTag: this.lastTag });
  }
}

/**
 * The staged path, round by round: small rounds as one JSON statement, a large first round
 * COPYed into the staging table and upserted in one round trip. With `opens` that round trip also
 * begins the transaction (BEGIN_WRITE), else the caller has begun it. Adds corrections and
 * duplicates to `result`; returns the latest versions.
 */
async function writeRounds(client: pg.PoolClient | pg.Client, p: Plan, smallRows: number, w: WriteParams, result: WriteResult, opens = false): Promise<[string, number][]> {
  const { iso } = w;
  let versions: [string, number][] = [];
  for (let k = 0; k < p.rounds.length; k++) {
    const idx = p.rounds[k];
    // Latest candidates and copies inside the write do not depend on the telemetry rows: once, first.
    const first = k === 0;
    // Later rounds (changed versions of a key inside one write) are rare and go as JSON.
    if (!first || idx.length <= smallRows) {
      const { rows: out } = await client.query<{ corrected: number; latest: [string, number][]; dups: [string, number][] }>({
        name: 'vpp_ingest_small',
        text: SMALL_SQL,
        values: [rowsJson(p, idx, iso), rowMarksJson(p, idx, iso), first ? w.latest : '[]', first ? w.dups : '[]'],
      });
      result.corrected += out[0].corrected;
      result.duplicates += markDuplicates(p, idx, out[0].dups);
      if (first) versions = out[0].latest;
      continue;
    }
    // One round trip: (BEGIN,) the staging table (created here every time: a table created inside
    // a transaction that rolled back is gone, so no per-connection memo can be trusted), the COPY
    // and LARGE_SQL.
    const inv = invalidationOf(p, idx, iso);
    const large = withLiterals(LARGE_SQL, [inv.ranges, w.latest, w.dups, String(idx.length), inv.marks]);
    const trip = await oneTrip(client, `${opens ? `${BEGIN_WRITE}; ` : ''}${STAGE_DDL}; ${COPY_SQL}; ${large}`, p, idx);
    const [written, corrected, latest, dups] = trip.rows[0] as [string, string, string, string];
    result.corrected += Number(corrected);
    versions = JSON.parse(latest) as [string, number][];
    if (Number(written) < idx.length) {
      result.duplicates += markDuplicates(p, idx, JSON.parse(dups) as [string, number][]);
      const log = invalidationOf(p, idx, iso);
      if (log.ranges !== '{}') await client.query({ name: 'vpp_ingest_log', text: LOG_SQL, values: [log.ranges, log.marks] });
    }
  }
  return versions;
}

/** Applies the plan, directly (see writeDirect) or on the staged path (writeRounds; `opens` as there). */
async function applyPlan(client: pg.PoolClient | pg.Client, p: Plan, smallRows: number, direct = false, opens = false): Promise<WriteResult> {
  const iso = new IsoCache();
  const result: WriteResult = { outcome: p.outcome, stored: 0, duplicates: p.duplicates, corrected: 0, latest: [], changed: [], direct, directConflict: false };
  const readingTexts: string[] = [];
  const w: WriteParams = { iso, latest: latestJson(p, iso, readingTexts), dups: flushDupsJson(p, iso) };
  const versions = direct ? await writeDirect(client, p, w) : await writeRounds(client, p, smallRows, w, result, opens);
  result.stored = p.rows.length - result.duplicates;
  const byNode = new Map<string, number>();
  for (let k = 0; k < p.latest.length; k++) byNode.set(p.rows[p.latest[k]].nodeId, k);
  for (const [nodeId, version] of versions) {
    const k = byNode.get(nodeId) as number;
    const r = p.rows[p.latest[k]];
    result.latest.push({ nodeId, ts: r.ts, receivedAt: r.receivedAt, timestampIso: iso.iso(r.ts), receivedAtIso: iso.iso(r.receivedAt), readingJson: readingTexts[k], version: Number(version) });
  }
  for (const idx of p.groups) {
    let from = Infinity;
    let to = -Infinity;
    for (const i of idx) {
      if (p.outcome[i] === OUTCOME_DUPLICATE) continue;
      const ts = p.rows[i].ts;
      if (ts < from) from = ts;
      if (ts + 1 > to) to = ts + 1;
    }
    if (from !== Infinity) result.changed.push({ nodeId: p.rows[idx[0]].nodeId, from, to });
  }
  return result;
}

/**
 * Which of `rows` are stored already with their own arrival stamp: written by an earlier delivery
 * of the same queue entry (a consumer that committed them and died before acknowledging the
 * entry). Redelivered rows are checked with this first, so that the redo is not counted as
 * duplicates. One join, restricted to the rows' nodes and time span so that only their days'
 * partitions are read (a correlated probe per row, pruned at run time, measured ~230 µs a row
 * against ~3 µs).
 */
export async function storedWithArrival(pool: pg.Pool, rows: readonly IngestRow[]): Promise<boolean[]> {
  if (rows.length === 0) return [];
  let lo = Infinity;
  let hi = -Infinity;
  for (const r of rows) {
    if (r.ts < lo) lo = r.ts;
    if (r.ts > hi) hi = r.ts;
  }
  const { rows: out } = await pool.query<{ hit: boolean }>(
    `SELECT t.node_id IS NOT NULL AS hit
     FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS u(node_id, ts_ms, recv_us, i)
     LEFT JOIN telemetry t ON t.node_id = u.node_id AND t.ts = timestamptz 'epoch' + u.ts_ms * interval '1 millisecond'
       AND t.received_at = timestamptz 'epoch' + u.recv_us * interval '1 microsecond'
       AND t.ts >= $4::timestamptz AND t.ts <= $5::timestamptz AND t.node_id = ANY($6::text[])
     ORDER BY u.i`,
    [
      rows.map((r) => r.nodeId),
      rows.map((r) => String(r.ts)),
      rows.map((r) => String(Math.round(r.receivedAt * 1000))),
      new Date(lo).toISOString(),
      new Date(hi).toISOString(),
      [...new Set(rows.map((r) => r.nodeId))],
    ],
  );
  return out.map((r) => r.hit);
}

/**
 * Writes rows on `client`, which must be inside a transaction begun with BEGIN_WRITE (the caller
 * commits). Exact counts as if the readings were applied one by one in arrival order.
 */
export async function writeRows(client: pg.PoolClient | pg.Client, rows: readonly IngestRow[], smallRows = SMALL_WRITE_ROWS): Promise<WriteResult> {
  return applyPlan(client, planWrite(rows), smallRows);
}

/**
 * Ensures the daily partitions for the measurement days of `rows` exist, creating missing ones in
 * their own short transactions (not inside a write, where the DDL lock would be held long).
 * Known days are cached in memory; `forget()` after a "no partition" error (retention dropped one).
 */
export class PartitionCache {
  private readonly known = new Set<number>();

  constructor(private readonly db: Db) {}

  /** @param on connection to use, outside any transaction (default: the pool) */
  async ensureFor(rows: readonly IngestRow[], on?: pg.PoolClient): Promise<void> {
    let missing: Set<number> | undefined;
    let lastDay = NaN;
    for (let i = 0; i < rows.length; i++) {
      const day = Math.floor(rows[i].ts / 86_400_000);
      if (day === lastDay) continue;
      lastDay = day;
      if (!this.known.has(day)) (missing ??= new Set()).add(day);
    }
    if (!missing) return;
    for (const day of [...missing].sort()) await this.ensureDay(day, on);
  }

  /** @param day days since 1970-01-01 (UTC) */
  async ensureDay(day: number, on?: pg.PoolClient): Promise<void> {
    try {
      await (on ?? this.db.pool).query('SELECT ensure_telemetry_partition($1::date)', [new Date(day * 86_400_000).toISOString().slice(0, 10)]);
    } catch (err) {
      // 42P07: another session created it at the same moment.
      if ((err as { code?: string }).code !== '42P07') throw err;
    }
    this.known.add(day);
  }

  forget(): void {
    this.known.clear();
  }
}

/** Counts a request's readings as they commit. */
interface Pending {
  stored: number;
  duplicates: number;
  remaining: number;
  settled: boolean;
  resolve(v: { stored: number; duplicates: number }): void;
  reject(err: unknown): void;
}

export interface WriterHooks {
  /** Awaited after commit, before any request is answered (cache updates). */
  afterCommit(result: WriteResult): Promise<void>;
  /** Called after the requests are answered (pub/sub fan-out, metrics). */
  published(result: WriteResult, rows: number, seconds: number): void;
}

export interface WriterOptions {
  /**
   * Flushes in flight at once, each on its own connection (default 4). A flush commits in about
   * one fsync whatever its size, so several in flight keep many small requests moving.
   */
  concurrency?: number;
  /**
   * A flush with more rows than this is split by node into two parallel flushes when a second
   * connection is free (default 2,000): large batches then use two database backends.
   */
  splitRows?: number;
  /** Largest number of readings in one flush. */
  maxFlushRows?: number;
  /** Flushes up to this many rows (one round) are one statement, rows as JSON (see SMALL_WRITE_ROWS). */
  smallRows?: number;
  /** Wait before a flush starts, ms (0: only the rest of the current event-loop turn). */
  delayMs?: number;
  /** Retries of a flush that failed on a deadlock, serialization failure or missing partition. */
  retries?: number;
  /**
   * While a flush runs, another starts only once this many readings are buffered (default 64);
   * fewer wait for a running flush to end. Under a stream of small requests flushes then grow
   * instead of multiplying (each costs a statement, a commit and its per-node work whatever its
   * size), while large requests still get parallel flushes at once.
   */
  extraFlushRows?: number;
  /**
   * A flush of at least this many rows (default 64), one version per key, all newer than the
   * newest reading this writer has seen committed for their node, is COPYed straight into
   * telemetry (see DIRECT_COPY_SQL); 0 turns that off.
   */
  directRows?: number;
}

const RETRYABLE = new Set(['40P01', '40001', '23514']);

/**
 * Group commit: readings of concurrent requests are buffered and written together, one
 * transaction per flush; while flushes run, the next readings accumulate. Up to `concurrency`
 * flushes run at once, but a node is in at most one of them: a reading whose node is being
 * written waits in the buffer (behind it, its node's later readings), so one key is never in two
 * concurrent flushes and its versions apply in arrival order. Each request's promise settles only
 * when all its readings are committed.
 */
export class GroupCommitWriter {
  private rows: IngestRow[] = [];
  private owners: Pending[] = [];
  /** Nodes with readings in a running flush. */
  private readonly busy = new Set<string>();
  private readonly running = new Set<Promise<void>>();
  private scheduled = false;
  private readonly concurrency: number;
  private readonly splitRows: number;
  private readonly maxFlushRows: number;
  private readonly smallRows: number;
  private readonly retries: number;
  private readonly delayMs: number;
  private readonly extraFlushRows: number;
  private readonly directRows: number;
  /**
   * Per node, the measurement time of its latest reading as this writer last committed it: keys
   * newer than it are new unless another writer (another instance) wrote them meanwhile.
   */
  private readonly newest = new Map<string, number>();

  constructor(
    private readonly db: Db,
    private readonly partitions: PartitionCache,
    private readonly hooks: WriterHooks,
    private readonly logger: Logger,
    opts: WriterOptions = {},
  ) {
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.splitRows = opts.splitRows ?? 2000;
    this.maxFlushRows = opts.maxFlushRows ?? 20_000;
    this.smallRows = opts.smallRows ?? SMALL_WRITE_ROWS;
    this.retries = opts.retries ?? 3;
    this.delayMs = opts.delayMs ?? 0;
    this.extraFlushRows = Math.max(1, opts.extraFlushRows ?? 64);
    this.directRows = opts.directRows ?? 64;
  }

  /** Readings waiting for a flush (not yet in a running one). */
  get buffered(): number {
    return this.rows.length;
  }

  /** Buffers rows for the next flush; resolves with this call's exact counts once all are committed. */
  submit(rows: readonly IngestRow[]): Promise<{ stored: number; duplicates: number }> {
    if (rows.length === 0) return Promise.resolve({ stored: 0, duplicates: 0 });
    return new Promise((resolve, reject) => {
      const p: Pending = { stored: 0, duplicates: 0, remaining: rows.length, settled: false, resolve, reject };
      for (let i = 0; i < rows.length; i++) {
        this.rows.push(rows[i]);
        this.owners.push(p);
      }
      this.schedule();
    });
  }

  /** Resolves when nothing is buffered or being written (used by stop()). */
  async drain(): Promise<void> {
    for (;;) {
      if (this.running.size === 0 && this.rows.length === 0) return;
      this.kick();
      await Promise.allSettled([...this.running]);
    }
  }

  /**
   * Starts flushes after the current event-loop turn, not at once: requests whose bytes have
   * already arrived are validated and buffered first, so a flush takes all of them. A flush costs
   * much the same for 1 row as for 50, so fewer, larger flushes let more requests through.
   */
  private schedule(): void {
    if (this.scheduled || this.rows.length === 0 || this.running.size >= this.concurrency) return;
    this.scheduled = true;
    const go = () => {
      this.scheduled = false;
      this.kick();
    };
    if (this.delayMs > 0) setTimeout(go, this.delayMs);
    else setImmediate(go);
  }

  private kick(): void {
    while (this.running.size < this.concurrency && this.rows.length > 0) {
      if (this.running.size > 0 && this.rows.length < this.extraFlushRows) return;
      // Take, in arrival order, the buffered rows whose node is not being written (up to the cap).
      const takeRows: IngestRow[] = [];
      const takeOwners: Pending[] = [];
      const keepRows: IngestRow[] = [];
      const keepOwners: Pending[] = [];
      const held = new Set<string>();
      for (let i = 0; i < this.rows.length; i++) {
        const id = this.rows[i].nodeId;
        if (takeRows.length < this.maxFlushRows && !this.busy.has(id) && !held.has(id)) {
          takeRows.push(this.rows[i]);
          takeOwners.push(this.owners[i]);
        } else {
          // A node left behind once stays behind for the rest of this pass: its order holds.
          held.add(id);
          keepRows.push(this.rows[i]);
          keepOwners.push(this.owners[i]);
        }
      }
      if (takeRows.length === 0) return;
      this.rows = keepRows;
      this.owners = keepOwners;
      if (takeRows.length > this.splitRows && this.concurrency - this.running.size >= 2) {
        // Two node-disjoint halves, written in parallel on two connections.
        const parts: [IngestRow[], Pending[]][] = [
          [[], []],
          [[], []],
        ];
        for (let i = 0; i < takeRows.length; i++) {
          const part = parts[hash(takeRows[i].nodeId) & 1];
          part[0].push(takeRows[i]);
          part[1].push(takeOwners[i]);
        }
        for (const [r, o] of parts) if (r.length) this.start(r, o);
      } else this.start(takeRows, takeOwners);
    }
  }

  private start(rows: IngestRow[], owners: Pending[]): void {
    const nodes = new Set<string>();
    for (const r of rows) nodes.add(r.nodeId);
    for (const id of nodes) this.busy.add(id);
    const run: Promise<void> = this.flush(rows, owners).finally(() => {
      for (const id of nodes) this.busy.delete(id);
      this.running.delete(run);
      this.schedule();
    });
    this.running.add(run);
  }

  private async flush(rows: IngestRow[], owners: Pending[]): Promise<void> {
    const t0 = performance.now();
    let result: WriteResult;
    try {
      result = await this.writeWithRetry(rows);
    } catch (err) {
      for (const p of owners) {
        if (!p.settled) {
          p.settled = true;
          p.reject(err);
        }
      }
      return;
    }
    try {
      await this.hooks.afterCommit(result);
    } catch (err) {
      this.logger.warn({ err }, 'post-commit cache update failed');
    }
    const outcome = result.outcome;
    for (let i = 0; i < owners.length; i++) {
      const p = owners[i];
      if (outcome[i] === OUTCOME_DUPLICATE) p.duplicates++;
      else p.stored++;
      if (--p.remaining === 0 && !p.settled) {
        p.settled = true;
        p.resolve({ stored: p.stored, duplicates: p.duplicates });
      }
    }
    this.hooks.published(result, rows.length, (performance.now() - t0) / 1000);
  }

  /** True when every row of the (single-round) plan is newer than its node's newest known reading. */
  private allNew(plan: Plan): boolean {
    if (this.directRows <= 0 || plan.rounds.length !== 1 || plan.rounds[0].length < this.directRows) return false;
    for (const idx of plan.groups) {
      const known = this.newest.get(plan.rows[idx[0]].nodeId);
      // Rows of a node are sorted by time: its oldest decides.
      if (known === undefined || plan.rows[idx[0]].ts <= known) return false;
    }
    return true;
  }

  private async writeWithRetry(rows: IngestRow[]): Promise<WriteResult> {
    const result = await this.writeAttempts(rows);
    for (const c of result.latest) this.newest.set(c.nodeId, c.ts);
    return result;
  }

  private async writeAttempts(rows: IngestRow[]): Promise<WriteResult> {
    let tryDirect = true;
    for (let attempt = 0; ; attempt++) {
      let direct = false;
      try {
        let client: pg.PoolClient;
        try {
          client = await this.db.pool.connect();
        } catch (err) {
          // No connection within the pool's timeout is an outage whatever the driver says.
          throw unavailable(`database unavailable: ${(err as Error).message}`, 2, 'DATABASE_UNAVAILABLE');
        }
        let broken = false;
        let inTransaction = false;
        try {
          await this.partitions.ensureFor(rows, client);
          const plan = planWrite(rows);
          direct = tryDirect && this.allNew(plan);
          let result: WriteResult;
          // One statement needs no explicit transaction: it commits on its own, in one round trip.
          if (!direct && isSingleStatement(plan, this.smallRows)) result = await applyPlan(client, plan, this.smallRows);
          else if (direct) {
            // One round trip: BEGIN, COPY, the bookkeeping statement and COMMIT (writeDirect).
            inTransaction = true;
            result = await applyPlan(client, plan, this.smallRows, true);
          } else {
            inTransaction = true;
            // A first round large enough to be staged opens the transaction in its own round trip.
            const opens = plan.rounds[0].length > this.smallRows;
            if (!opens) await client.query(BEGIN_WRITE);
            result = await applyPlan(client, plan, this.smallRows, false, opens);
            await client.query('COMMIT');
          }
          result.directConflict = !tryDirect;
          return result;
        } catch (err) {
          if (inTransaction) {
            broken = await client.query('ROLLBACK').then(
              () => false,
              () => true,
            );
          } else {
            // No SQLSTATE, or a connection/shutdown class: the connection is not to be reused.
            const code = (err as { code?: string }).code;
            broken = !code || code.startsWith('08') || code.startsWith('57');
          }
          throw err;
        } finally {
          client.release(broken);
        }
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (direct && code === UNIQUE_VIOLATION) {
          // A key was there after all (written by another instance): the staged path decides, not a retry.
          tryDirect = false;
          attempt--;
          this.logger.debug('direct telemetry write met an existing key; written on the staged path');
          continue;
        }
        if (attempt >= this.retries || !code || !RETRYABLE.has(code)) throw err;
        if (code === '23514') this.partitions.forget();
        this.logger.warn({ code, attempt }, 'telemetry flush retried');
      }
    }
  }
}

/** FNV-1a: splits a large flush's nodes over two connections. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
