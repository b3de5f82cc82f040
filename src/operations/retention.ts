import path from 'node:path';
import type { Logger } from 'pino';
import type pg from 'pg';
import { archiveTable, readManifest, removePartial, verifyArchive, type ArchiveManifest } from './archive.js';
import { DAY_MS, partitionDay } from './partitions.js';
import { expandInvalidationLogIn } from '../telemetry/rollup-store.js';

/** Marks a partition the retention job has started detaching, so a crashed run can be resumed safely. */
const DETACH_MARK = 'vpp:retention-detached';

export interface PartitionInfo {
  name: string;
  /** UTC midnight (epoch ms) of the day it holds. */
  day: number;
  /** attached: part of `telemetry`; pending: a concurrent detach was interrupted; detached: standalone table left by retention. */
  state: 'attached' | 'pending' | 'detached';
}

/** Every daily raw-telemetry partition, attached or left detached by an interrupted retention run. */
export async function listTelemetryPartitions(client: pg.Pool | pg.PoolClient): Promise<PartitionInfo[]> {
  const { rows } = await client.query<{ name: string; parent: string | null; pending: boolean | null; mark: string | null }>(
    `SELECT c.relname AS name, p.relname AS parent, i.inhdetachpending AS pending, obj_description(c.oid, 'pg_class') AS mark
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
       LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
       LEFT JOIN pg_class p ON p.oid = i.inhparent
      WHERE c.relkind = 'r' AND c.relname ~ '^telemetry_[0-9]{8}$'
      ORDER BY c.relname`,
  );
  const out: PartitionInfo[] = [];
  for (const r of rows) {
    const day = partitionDay(r.name);
    if (day === undefined) continue;
    if (r.parent === 'telemetry') out.push({ name: r.name, day, state: r.pending ? 'pending' : 'attached' });
    // A standalone table of that name is only ours to drop if retention marked it before detaching.
    else if (r.parent === null && r.mark === DETACH_MARK) out.push({ name: r.name, day, state: 'detached' });
  }
  return out;
}

export interface TelemetryRetentionOptions {
  /** Raw readings measured before now − days are removed (whole partitions only). 1–36500. */
  retentionDays: number;
  /** Folder the archives go to (`DATA_DIR/archive`). */
  archiveDir: string;
  /** Instance that writes the archive (recorded in `telemetry_archives`). */
  instanceId: string;
  /** Longest wait for a lock on `telemetry` before giving up this turn (ms); keeps ingestion from queueing behind us. */
  lockTimeoutMs?: number;
  logger?: Logger;
  signal?: AbortSignal;
  /** Called after each partition is dropped (metrics). */
  onDropped?: (manifest: ArchiveManifest, timings: { detachMs: number; archiveMs: number; dropMs: number }) => void;
}

export interface TelemetryRetentionResult {
  cutoff: string;
  dropped: { partition: string; rows: number; file: string }[];
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * Drops every raw-telemetry partition whose whole day lies before now − retentionDays,
 * archiving it first. Per partition:
 *  1. mark it, then `DETACH PARTITION ... CONCURRENTLY` (outside a transaction: it only takes a
 *     SHARE UPDATE EXCLUSIVE lock on `telemetry`, so inserts and queries keep running; it waits
 *     for transactions that could see the partition instead of blocking new ones);
 *  2. archive the now-standalone table (nothing can write to it any more) and verify the file;
 *  3. drop it, with the dirty-bucket marks (after expanding the invalidation log) and quality
 *     counters of that day, in one transaction.
 * A run that dies in between leaves a marked table that the next run resumes at the right step.
 */
export async function runTelemetryRetention(pool: pg.Pool, opts: TelemetryRetentionOptions, now = Date.now()): Promise<TelemetryRetentionResult> {
  const cutoffMs = now - opts.retentionDays * DAY_MS;
  const result: TelemetryRetentionResult = { cutoff: new Date(cutoffMs).toISOString(), dropped: [] };
  const client = await pool.connect();
  try {
    await client.query(`SET lock_timeout = ${Math.max(1, Math.round(opts.lockTimeoutMs ?? 10_000))}`);
    const due = (await listTelemetryPartitions(client)).filter((p) => p.day + DAY_MS <= cutoffMs);
    for (const p of due) {
      if (opts.signal?.aborted) break;
      const t0 = performance.now();
      if (p.state === 'attached') {
        await client.query(`COMMENT ON TABLE ${quoteIdent(p.name)} IS '${DETACH_MARK}'`);
        await client.query(`ALTER TABLE telemetry DETACH PARTITION ${quoteIdent(p.name)} CONCURRENTLY`);
      } else if (p.state === 'pending') {
        await client.query(`ALTER TABLE telemetry DETACH PARTITION ${quoteIdent(p.name)} FINALIZE`);
      }
      const t1 = performance.now();
      const manifest = await archiveOrReuse(client, pool, p.name, opts);
      const t2 = performance.now();
      await client.query('BEGIN');
      try {
        await client.query(`DROP TABLE ${quoteIdent(p.name)}`);
        // Marks for a dropped day would make the rollup refresher recompute its buckets from nothing.
        // Buckets still pending in the invalidation log become marks first (every write to the
        // partition committed before the detach ended), so none can come back after this.
        await expandInvalidationLogIn(client);
        await client.query('DELETE FROM telemetry_dirty_buckets WHERE bucket_start >= $1 AND bucket_start < $2', [new Date(p.day), new Date(p.day + DAY_MS)]);
        await client.query('DELETE FROM telemetry_quality_keys WHERE ts >= $1 AND ts < $2', [new Date(p.day), new Date(p.day + DAY_MS)]);
        await client.query('UPDATE telemetry_archives SET dropped_at = now() WHERE partition = $1', [p.name]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
      const t3 = performance.now();
      opts.logger?.info({ partition: p.name, rows: manifest.rowCount, file: manifest.file, detachMs: Math.round(t1 - t0), archiveMs: Math.round(t2 - t1), dropMs: Math.round(t3 - t2) }, 'telemetry partition archived and dropped');
      opts.onDropped?.(manifest, { detachMs: t1 - t0, archiveMs: t2 - t1, dropMs: t3 - t2 });
      result.dropped.push({ partition: p.name, rows: manifest.rowCount, file: path.join(opts.archiveDir, manifest.file) });
    }
  } finally {
    await client.query('RESET lock_timeout').catch(() => undefined);
    client.release();
  }
  return result;
}

/**
 * An archive written by an earlier, interrupted run of this instance is reused when it still
 * verifies against the table as it is; otherwise the table is archived (again).
 */
async function archiveOrReuse(client: pg.PoolClient, pool: pg.Pool, table: string, opts: TelemetryRetentionOptions): Promise<ArchiveManifest> {
  const file = path.join(opts.archiveDir, `${table}.csv.gz`);
  const prior = await client.query<{ file: string; row_count: number }>('SELECT file, row_count FROM telemetry_archives WHERE partition = $1 AND instance_id = $2', [table, opts.instanceId]);
  if (prior.rows[0]?.file === file) {
    try {
      const m = await readManifest(file);
      await verifyArchive(file, m);
      const { rows } = await client.query<{ n: number }>(`SELECT count(*)::bigint AS n FROM ${quoteIdent(table)}`);
      if (Number(rows[0].n) === m.rowCount) return m;
    } catch {
      /* missing or damaged: archive again below */
    }
  }
  await removePartial(opts.archiveDir, table);
  const m = await archiveTable(pool, table, opts.archiveDir);
  await client.query(
    `INSERT INTO telemetry_archives (partition, day, instance_id, file, sha256, bytes, row_count, node_count, min_ts, max_ts)
     VALUES ($1, $2::date, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (partition) DO UPDATE SET instance_id = EXCLUDED.instance_id, file = EXCLUDED.file, sha256 = EXCLUDED.sha256,
       bytes = EXCLUDED.bytes, row_count = EXCLUDED.row_count, node_count = EXCLUDED.node_count, min_ts = EXCLUDED.min_ts,
       max_ts = EXCLUDED.max_ts, archived_at = now(), dropped_at = NULL`,
    [table, m.partitionFrom?.slice(0, 10) ?? null, opts.instanceId, file, m.sha256, m.bytes, m.rowCount, m.nodeCount, m.minTs, m.maxTs],
  );
  return m;
}

export interface RollupRetentionOptions {
  /** Rollup buckets starting before now − days are deleted. 1–36500. */
  retentionDays: number;
  /** Rows per DELETE statement: short transactions, so refreshes and reads are never held up long. */
  chunkRows?: number;
  signal?: AbortSignal;
}

/**
 * Deletes rollup rows (every `telemetry_rollup_<tier>` table with a `bucket_start` column)
 * whose bucket starts before now − retentionDays, in chunks of `chunkRows`, each its own
 * transaction. Returns rows deleted per table.
 */
export async function runRollupRetention(pool: pg.Pool, opts: RollupRetentionOptions, now = Date.now()): Promise<Record<string, number>> {
  const cutoff = new Date(now - opts.retentionDays * DAY_MS);
  const chunk = Math.max(1, opts.chunkRows ?? 10_000);
  // Parents only: for a partitioned rollup table, deleting through the parent reaches every partition.
  const { rows: tables } = await pool.query<{ name: string }>(
    `SELECT c.relname AS name
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'bucket_start' AND NOT a.attisdropped
      WHERE c.relkind IN ('r', 'p') AND c.relname LIKE 'telemetry\\_rollup\\_%' AND NOT c.relispartition
      ORDER BY 1`,
  );
  const deleted: Record<string, number> = {};
  for (const { name } of tables) {
    deleted[name] = 0;
    for (;;) {
      if (opts.signal?.aborted) return deleted;
      // (tableoid, ctid) identifies a row in a plain and in a partitioned table alike.
      const r = await pool.query(
        `DELETE FROM ${quoteIdent(name)} WHERE (tableoid, ctid) IN (SELECT tableoid, ctid FROM ${quoteIdent(name)} WHERE bucket_start < $1 LIMIT ${chunk})`,
        [cutoff],
      );
      deleted[name] += r.rowCount ?? 0;
      if ((r.rowCount ?? 0) < chunk) break;
    }
  }
  return deleted;
}
