import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
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
  /** The reading in API shape (camelCase; nodeId and timestamp included). */
  reading: Record<string, unknown>;
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
}

export const OUTCOME_STORED = 0;
export const OUTCOME_DUPLICATE = 1;

const COLS = NUMERIC_FIELDS.map(([, c]) => c);

// Per-connection staging table; rows vanish at commit, so a failed flush leaves nothing behind.
const STAGE_DDL = `CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (
  seq integer NOT NULL, round integer NOT NULL, dup_extra integer NOT NULL, interval_s integer NOT NULL, is_last boolean NOT NULL,
  node_id text NOT NULL, ts timestamptz NOT NULL, received_at timestamptz NOT NULL,
  ${COLS.map((c) => `${c} double precision`).join(', ')},
  health_status text, quality text, extra jsonb, flags smallint NOT NULL
) ON COMMIT DELETE ROWS`;

const COPY_SQL = `COPY telemetry_stage (seq, round, dup_extra, interval_s, is_last, node_id, ts, received_at, ${COLS.join(', ')}, health_status, quality, extra, flags) FROM STDIN`;

const VALUE_COLS = [...COLS, 'health_status', 'quality', 'extra'];
const READING_JSON = `jsonb_strip_nulls(jsonb_build_object('nodeId', node_id, 'timestamp', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), ${NUMERIC_FIELDS.map(([api, c]) => `'${api}', ${c}`).join(', ')}, 'healthStatus', health_status, 'quality', quality))
    || CASE WHEN extra IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('extra', extra) END`;
const EPOCH_MS = (e: string) => `(extract(epoch FROM ${e}) * 1000)::float8`;

/**
 * The one statement that applies a round of staged rows: upsert into telemetry (sorted by key so
 * concurrent writers lock rows in the same order and cannot deadlock; an identical re-send changes
 * nothing and is not returned; a replacement sets FLAG_CORRECTED on the row, which is how it is
 * told from an insert), then, from the rows written, telemetry_latest (forward in measurement time
 * only), the dirty 15-minute buckets and the per-day correction counters. Prepared once per
 * connection: it has no parameters, the round is part of its text.
 */
export function applySql(round: number): string {
  return `WITH ins AS (
  INSERT INTO telemetry AS t (node_id, ts, received_at, ${VALUE_COLS.join(', ')}, flags)
  SELECT node_id, ts, received_at, ${VALUE_COLS.join(', ')}, flags FROM telemetry_stage WHERE round = ${round} ORDER BY node_id, ts
  ON CONFLICT (node_id, ts) DO UPDATE SET received_at = EXCLUDED.received_at, ${VALUE_COLS.map((c) => `${c} = EXCLUDED.${c}`).join(', ')},
    flags = EXCLUDED.flags | ${FLAG_CORRECTED}
  WHERE (${VALUE_COLS.map((c) => `t.${c}`).join(', ')}) IS DISTINCT FROM (${VALUE_COLS.map((c) => `EXCLUDED.${c}`).join(', ')})
  RETURNING t.node_id, t.ts, t.flags
), last AS (
  SELECT node_id, ts, received_at, interval_s, ${READING_JSON} AS reading
  FROM telemetry_stage WHERE round = ${round} AND is_last
), lat AS (
  -- The newest staged row per node (is_last, chosen by the writer). If it was an identical re-send,
  -- the stored latest is already that reading or a newer one, and nothing changes.
  INSERT INTO telemetry_latest AS l (node_id, ts, received_at, reading)
  SELECT node_id, ts, received_at, reading FROM last ORDER BY node_id
  ON CONFLICT (node_id) DO UPDATE SET ts = EXCLUDED.ts, received_at = EXCLUDED.received_at, reading = EXCLUDED.reading,
    version = nextval('telemetry_latest_version_seq')
  WHERE EXCLUDED.ts > l.ts OR (EXCLUDED.ts = l.ts AND EXCLUDED.reading IS DISTINCT FROM l.reading)
  RETURNING l.node_id, l.ts, l.received_at, l.reading, l.version
), dirty AS (
  -- Every bucket overlapping [ts, ts + 3 x interval) of each written reading: per node and bucket of
  -- ts, the latest ts reaches furthest.
  INSERT INTO telemetry_dirty_buckets AS d (node_id, bucket_start)
  SELECT DISTINCT g.node_id, b.start
  FROM (SELECT node_id, floor(extract(epoch FROM ts) / 900) AS q, max(ts) AS mx FROM ins GROUP BY 1, 2) g
  JOIN last v ON v.node_id = g.node_id
  CROSS JOIN LATERAL generate_series(to_timestamp(g.q * 900), g.mx + v.interval_s * interval '3 seconds' - interval '1 microsecond', interval '15 minutes') AS b(start)
  ORDER BY 1, 2
  ON CONFLICT (node_id, bucket_start) DO UPDATE SET marked_at = clock_timestamp()
), q AS (
  INSERT INTO telemetry_quality_daily AS q (node_id, day, duplicates, corrected)
  SELECT node_id, day, sum(dups), sum(corr) FROM (
    SELECT node_id, (ts AT TIME ZONE 'UTC')::date AS day, 0 AS dups, 1 AS corr FROM ins WHERE flags & ${FLAG_CORRECTED} <> 0
    UNION ALL
    SELECT node_id, (ts AT TIME ZONE 'UTC')::date, dup_extra, 0 FROM telemetry_stage WHERE round = ${round} AND dup_extra > 0) x
  GROUP BY 1, 2 ORDER BY 1, 2
  ON CONFLICT (node_id, day) DO UPDATE SET duplicates = q.duplicates + EXCLUDED.duplicates, corrected = q.corrected + EXCLUDED.corrected
)
SELECT
  (SELECT count(*) FROM ins)::int AS written,
  (SELECT count(*) FROM ins WHERE flags & ${FLAG_CORRECTED} <> 0)::int AS corrected,
  (SELECT coalesce(json_agg(json_build_array(node_id, ${EPOCH_MS('ts')}, ${EPOCH_MS('received_at')}, reading, version)), '[]') FROM lat) AS latest,
  (SELECT coalesce(json_agg(json_build_array(node_id, lo, hi)), '[]')
     FROM (SELECT node_id, ${EPOCH_MS('min(ts)')} AS lo, ${EPOCH_MS('max(ts)')} + 1 AS hi FROM ins GROUP BY node_id) c) AS changed`;
}

/**
 * Run only when a round wrote fewer rows than it staged: finds the staged rows that were identical
 * re-sends (their stored row kept its own, earlier arrival time) and counts them per day. The
 * probe is a scalar subquery so it stays one index lookup per staged row.
 */
function duplicatesSql(round: number): string {
  return `WITH d AS (
  SELECT s.seq, s.node_id, s.ts FROM telemetry_stage s
  WHERE s.round = ${round}
    AND (SELECT t.received_at FROM telemetry t WHERE t.node_id = s.node_id AND t.ts = s.ts LIMIT 1) IS DISTINCT FROM s.received_at
), q AS (
  INSERT INTO telemetry_quality_daily AS q (node_id, day, duplicates, corrected)
  SELECT node_id, (ts AT TIME ZONE 'UTC')::date, count(*), 0 FROM d GROUP BY 1, 2 ORDER BY 1, 2
  ON CONFLICT (node_id, day) DO UPDATE SET duplicates = q.duplicates + EXCLUDED.duplicates
)
SELECT coalesce(json_agg(seq), '[]') AS seqs FROM d`;
}

const staged = new WeakSet<pg.PoolClient | pg.Client>();

/** RFC 3339 UTC with microseconds from epoch ms with a fractional part (arrival stamps are per-µs unique). */
function isoMicros(ms: number): string {
  const whole = Math.floor(ms);
  const micros = Math.min(999, Math.round((ms - whole) * 1000));
  return `${new Date(whole).toISOString().slice(0, 23)}${String(micros).padStart(3, '0')}Z`;
}

/** Text COPY escaping for the one free-text column (jsonb); the others cannot hold special characters. */
function escapeCopy(s: string): string {
  return /[\\\t\n\r]/.test(s) ? s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r') : s;
}

/** Up to this many rows, the staging table is filled by one parameterised INSERT (one round trip; COPY takes two). */
const SMALL_WRITE_ROWS = 256;
const INSERT_STAGE_SQL = `INSERT INTO telemetry_stage SELECT * FROM json_populate_recordset(NULL::telemetry_stage, $1::json)`;

async function insertRows(client: pg.PoolClient | pg.Client, rows: readonly IngestRow[], include: Uint8Array, round: Int32Array, dupExtra: Int32Array, isLast: Uint8Array): Promise<void> {
  const parts: string[] = [];
  for (let i = 0; i < rows.length; i++) {
    if (!include[i]) continue;
    const r = rows[i];
    let o = `{"seq":${i},"round":${round[i]},"dup_extra":${dupExtra[i]},"interval_s":${r.intervalS},"is_last":${isLast[i] ? 'true' : 'false'},"node_id":${JSON.stringify(r.nodeId)},"ts":"${new Date(r.ts).toISOString()}","received_at":"${isoMicros(r.receivedAt)}"`;
    for (let k = 0; k < COLS.length; k++) o += `,"${COLS[k]}":${r.values[k] === null ? 'null' : r.values[k]}`;
    o += `,"health_status":${r.healthStatus === null ? 'null' : JSON.stringify(r.healthStatus)},"quality":${r.quality === null ? 'null' : JSON.stringify(r.quality)},"extra":${r.extra ?? 'null'},"flags":${r.flags}}`;
    parts.push(o);
  }
  await client.query({ name: 'vpp_telemetry_stage_insert', text: INSERT_STAGE_SQL, values: [`[${parts.join(',')}]`] });
}

async function copyRows(client: pg.PoolClient | pg.Client, rows: readonly IngestRow[], include: Uint8Array, round: Int32Array, dupExtra: Int32Array, isLast: Uint8Array): Promise<void> {
  const stream = client.query(copyFrom(COPY_SQL));
  const done = new Promise<void>((resolve, reject) => {
    stream.on('error', reject);
    stream.on('finish', resolve);
  });
  let chunk = '';
  let lastRecv = -1;
  let recvIso = '';
  for (let i = 0; i < rows.length; i++) {
    if (!include[i]) continue;
    const r = rows[i];
    if (r.receivedAt !== lastRecv) {
      lastRecv = r.receivedAt;
      recvIso = isoMicros(lastRecv);
    }
    let line = `${i}\t${round[i]}\t${dupExtra[i]}\t${r.intervalS}\t${isLast[i] ? 't' : 'f'}\t${r.nodeId}\t${new Date(r.ts).toISOString()}\t${recvIso}`;
    const v = r.values;
    for (let k = 0; k < v.length; k++) line += v[k] === null ? '\t\\N' : `\t${v[k]}`;
    line += `\t${r.healthStatus ?? '\\N'}\t${r.quality ?? '\\N'}\t${r.extra === null ? '\\N' : escapeCopy(r.extra)}\t${r.flags}\n`;
    chunk += line;
    if (chunk.length > 256 * 1024) {
      stream.write(chunk);
      chunk = '';
    }
  }
  if (chunk) stream.write(chunk);
  stream.end();
  await done;
}

/**
 * Starts a write transaction. The apply statement is prepared once per connection, so its plan
 * must suit any staged size: the planner's guess for a temp table is a few rows, and a nested loop
 * over the returned rows would be quadratic, while hash joins are linear at every size. (The
 * lateral generate_series stays a nested loop and carries the disabled-node cost penalty, which
 * must not trigger JIT compilation.) One round trip; the settings end with the transaction.
 */
export const BEGIN_WRITE = 'BEGIN; SET LOCAL enable_nestloop = off; SET LOCAL jit = off';

/**
 * Writes rows on `client`, which must be inside a transaction begun with BEGIN_WRITE (the caller commits). Rows are taken
 * in arrival order: a later identical copy of a key is a duplicate; a later different version
 * goes into the next round, applied after the earlier one, so counts are exactly those of
 * applying the readings one by one (last write wins).
 */
export async function writeRows(client: pg.PoolClient | pg.Client, rows: readonly IngestRow[]): Promise<WriteResult> {
  const n = rows.length;
  const outcome = new Uint8Array(n);
  const include = new Uint8Array(n);
  const round = new Int32Array(n);
  const dupExtra = new Int32Array(n);
  const lastOfKey = new Map<string, number>();
  let rounds = 0;
  let duplicates = 0;
  for (let i = 0; i < n; i++) {
    const r = rows[i];
    const key = `${r.nodeId}\u0000${r.ts}`;
    const j = lastOfKey.get(key);
    if (j === undefined) {
      lastOfKey.set(key, i);
      include[i] = 1;
    } else if (sameReading(rows[j], r)) {
      outcome[i] = OUTCOME_DUPLICATE;
      dupExtra[j]++;
      duplicates++;
    } else {
      round[i] = round[j] + 1;
      if (round[i] + 1 > rounds) rounds = round[i] + 1;
      lastOfKey.set(key, i);
      include[i] = 1;
    }
  }
  if (rounds === 0) rounds = 1;
  // The newest row of each node in each round feeds telemetry_latest.
  const isLast = new Uint8Array(n);
  const newest = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    if (!include[i]) continue;
    const key = rounds === 1 ? rows[i].nodeId : `${round[i]}\u0000${rows[i].nodeId}`;
    const j = newest.get(key);
    if (j === undefined || rows[j].ts < rows[i].ts) newest.set(key, i);
  }
  for (const i of newest.values()) isLast[i] = 1;
  const result: WriteResult = { outcome, stored: 0, duplicates, corrected: 0, latest: [], changed: [] };
  if (duplicates === n) return result;

  if (!staged.has(client)) {
    await client.query(STAGE_DDL);
    staged.add(client);
  }
  if (n <= SMALL_WRITE_ROWS) await insertRows(client, rows, include, round, dupExtra, isLast);
  else await copyRows(client, rows, include, round, dupExtra, isLast);
  const latest = new Map<string, LatestChange>();
  const changed = new Map<string, ChangedRange>();
  const perRound = new Int32Array(rounds);
  for (let i = 0; i < n; i++) if (include[i]) perRound[round[i]]++;
  for (let k = 0; k < rounds; k++) {
    const { rows: out } = await client.query<{ written: number; corrected: number; latest: [string, number, number, Record<string, unknown>, number][]; changed: [string, number, number][] }>({
      name: `vpp_telemetry_apply_${k}`,
      text: applySql(k),
    });
    const res = out[0];
    result.corrected += res.corrected;
    if (res.written < perRound[k]) {
      const { rows: d } = await client.query<{ seqs: number[] }>({ name: `vpp_telemetry_dups_${k}`, text: duplicatesSql(k) });
      for (const seq of d[0].seqs) {
        outcome[seq] = OUTCOME_DUPLICATE;
        result.duplicates++;
      }
    }
    for (const [nodeId, ts, receivedAt, reading, version] of res.latest) latest.set(nodeId, { nodeId, ts, receivedAt, reading, version: Number(version) });
    for (const [nodeId, from, to] of res.changed) {
      const c = changed.get(nodeId);
      if (c) {
        c.from = Math.min(c.from, from);
        c.to = Math.max(c.to, to);
      } else changed.set(nodeId, { nodeId, from, to });
    }
  }
  result.stored = n - result.duplicates;
  result.latest = [...latest.values()];
  result.changed = [...changed.values()];
  return result;
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

interface Slot {
  rows: IngestRow[];
  owners: Pending[];
  running: Promise<void> | null;
}

export interface WriterHooks {
  /** Awaited after commit, before any request is answered (cache updates). */
  afterCommit(result: WriteResult): Promise<void>;
  /** Called after the requests are answered (pub/sub fan-out, metrics). */
  published(result: WriteResult, rows: number, seconds: number): void;
}

export interface WriterOptions {
  /**
   * Concurrent flushes (each on its own connection); nodes are spread over them by hash. Default 1:
   * a request's rows then commit in one write, and writes stay large (the per-node cost of latest
   * values and dirty buckets is paid once per write, so readings per node per write is what counts).
   */
  slots?: number;
  /** Largest number of readings in one flush. */
  maxFlushRows?: number;
  /** Retries of a flush that failed on a deadlock, serialization failure or missing partition. */
  retries?: number;
}

const RETRYABLE = new Set(['40P01', '40001', '23514']);

/**
 * Group commit: readings of concurrent requests are buffered per slot and written together in one
 * transaction per flush; while a slot's flush runs, the next batch accumulates. A node always maps
 * to the same slot, so one key is never in two concurrent flushes and its versions apply in
 * arrival order. Each request's promise settles only when all its readings are committed.
 */
export class GroupCommitWriter {
  private readonly slots: Slot[];
  private readonly maxFlushRows: number;
  private readonly retries: number;

  constructor(
    private readonly db: Db,
    private readonly partitions: PartitionCache,
    private readonly hooks: WriterHooks,
    private readonly logger: Logger,
    opts: WriterOptions = {},
  ) {
    this.slots = Array.from({ length: opts.slots ?? 1 }, () => ({ rows: [], owners: [], running: null }));
    this.maxFlushRows = opts.maxFlushRows ?? 20_000;
    this.retries = opts.retries ?? 3;
  }

  /** Readings waiting for a flush (not yet in a running one). */
  get buffered(): number {
    let n = 0;
    for (const s of this.slots) n += s.rows.length;
    return n;
  }

  /** Buffers rows for the next flush; resolves with this call's exact counts once all are committed. */
  submit(rows: readonly IngestRow[]): Promise<{ stored: number; duplicates: number }> {
    if (rows.length === 0) return Promise.resolve({ stored: 0, duplicates: 0 });
    return new Promise((resolve, reject) => {
      const p: Pending = { stored: 0, duplicates: 0, remaining: rows.length, settled: false, resolve, reject };
      const nSlots = this.slots.length;
      let lastNode = '';
      let slot = this.slots[0];
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i];
        if (r.nodeId !== lastNode) {
          lastNode = r.nodeId;
          slot = this.slots[nSlots === 1 ? 0 : hash(r.nodeId) % nSlots];
        }
        slot.rows.push(r);
        slot.owners.push(p);
      }
      for (const s of this.slots) this.kick(s);
    });
  }

  /** Resolves when nothing is buffered or being written (used by stop()). */
  async drain(): Promise<void> {
    for (;;) {
      const running = this.slots.map((s) => s.running).filter((r): r is Promise<void> => r !== null);
      if (running.length === 0 && this.buffered === 0) return;
      for (const s of this.slots) this.kick(s);
      await Promise.allSettled(this.slots.map((s) => s.running).filter((r): r is Promise<void> => r !== null));
    }
  }

  private kick(slot: Slot): void {
    if (slot.running || slot.rows.length === 0) return;
    const n = Math.min(slot.rows.length, this.maxFlushRows);
    const rows = n === slot.rows.length ? slot.rows : slot.rows.slice(0, n);
    const owners = n === slot.owners.length ? slot.owners : slot.owners.slice(0, n);
    if (n === slot.rows.length) {
      slot.rows = [];
      slot.owners = [];
    } else {
      slot.rows = slot.rows.slice(n);
      slot.owners = slot.owners.slice(n);
    }
    slot.running = this.flush(rows, owners).finally(() => {
      slot.running = null;
      this.kick(slot);
    });
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

  private async writeWithRetry(rows: IngestRow[]): Promise<WriteResult> {
    for (let attempt = 0; ; attempt++) {
      try {
        let client: pg.PoolClient;
        try {
          client = await this.db.pool.connect();
        } catch (err) {
          // No connection within the pool's timeout is an outage whatever the driver says.
          throw unavailable(`database unavailable: ${(err as Error).message}`, 2, 'DATABASE_UNAVAILABLE');
        }
        let broken = false;
        try {
          await this.partitions.ensureFor(rows, client);
          await client.query(BEGIN_WRITE);
          const result = await writeRows(client, rows);
          await client.query('COMMIT');
          return result;
        } catch (err) {
          broken = await client.query('ROLLBACK').then(
            () => false,
            () => true,
          );
          throw err;
        } finally {
          client.release(broken);
        }
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (attempt >= this.retries || !code || !RETRYABLE.has(code)) throw err;
        if (code === '23514') this.partitions.forget();
        this.logger.warn({ code, attempt }, 'telemetry flush retried');
      }
    }
  }
}

/** FNV-1a: spreads node ids over slots. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
