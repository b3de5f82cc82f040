import type { Logger } from 'pino';
import type { HealthCheck } from '../cache/types.js';
import type { Db } from '../db/pool.js';
import { AppError, fromDatabaseError } from '../http/errors.js';
import { QUEUE_FULL_RETRY_AFTER, decodeRows, encodeRows, type IngestQueue, type QueueStats } from './queue.js';
import type { IngestRow } from './validate.js';
import { BEGIN_WRITE, writeRows, type PartitionCache, type WriterHooks } from './writer.js';

/** Advisory lock serialising enqueues, so the bound check and the insert are one step. */
const ENQUEUE_LOCK = 7_460_003;

export interface PostgresQueueOptions {
  /** Bound in readings (INGEST_QUEUE_MAX). */
  max: number;
  /** Queue rows taken per consumer transaction. */
  batchEntries?: number;
  /** Poll interval while the queue is empty (ms); a local enqueue wakes the consumer at once. */
  pollMs?: number;
}

/**
 * The async queue in PostgreSQL (used without Redis): a row per accepted batch in
 * telemetry_ingest_queue. The consumer locks entries with FOR UPDATE SKIP LOCKED (so several
 * instances share the work), writes their readings and deletes them in one transaction: an entry
 * is gone exactly when its readings are committed.
 */
export class PostgresQueue implements IngestQueue {
  readonly kind = 'postgres' as const;
  private running = false;
  private loop?: Promise<void>;
  private wake?: () => void;
  private readonly batchEntries: number;
  private readonly pollMs: number;

  constructor(
    private readonly db: Db,
    private readonly partitions: PartitionCache,
    private readonly hooks: WriterHooks,
    private readonly logger: Logger,
    private readonly opts: PostgresQueueOptions,
  ) {
    this.batchEntries = opts.batchEntries ?? 8;
    this.pollMs = opts.pollMs ?? 250;
  }

  async enqueue(rows: readonly IngestRow[]): Promise<void> {
    if (rows.length > this.opts.max) throw batchAboveQueueMax(this.opts.max, rows.length);
    const payload = encodeRows(rows);
    let client;
    try {
      client = await this.db.pool.connect();
    } catch (err) {
      throw fromDatabaseError(err) ?? err;
    }
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [ENQUEUE_LOCK]);
      const { rows: d } = await client.query<{ depth: number }>('SELECT coalesce(sum(readings), 0)::int8 AS depth FROM telemetry_ingest_queue');
      if (d[0].depth + rows.length > this.opts.max) {
        await client.query('ROLLBACK');
        throw queueFull(this.opts.max);
      }
      await client.query('INSERT INTO telemetry_ingest_queue (readings, payload) VALUES ($1, $2)', [rows.length, payload]);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      if (err instanceof AppError) throw err;
      throw fromDatabaseError(err) ?? err;
    } finally {
      client.release();
    }
    this.wake?.();
  }

  async stats(): Promise<QueueStats> {
    const { rows } = await this.db.pool.query<{ depth: number; lag: number }>(
      `SELECT coalesce(sum(readings), 0)::int8 AS depth, coalesce(extract(epoch FROM now() - min(enqueued_at)), 0)::float8 AS lag FROM telemetry_ingest_queue`,
    );
    return { depth: rows[0].depth, lagSeconds: Math.max(0, Math.round(rows[0].lag * 1000) / 1000) };
  }

  async health(): Promise<HealthCheck> {
    const s = await this.stats();
    return { ok: s.depth < this.opts.max, backend: 'postgres', depth: s.depth, lagSeconds: s.lagSeconds, max: this.opts.max };
  }

  async start(): Promise<void> {
    this.running = true;
    this.loop = this.consume();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake?.();
    await this.loop;
    // A graceful stop writes what is queued before the process exits (bounded; whatever is left,
    // e.g. while the database is down, stays in the table for the next start).
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      try {
        if ((await this.consumeOnce()) === 0) break;
      } catch (err) {
        this.logger.warn({ err }, 'could not drain the ingestion queue at stop; entries stay queued');
        break;
      }
    }
  }

  /** Takes and writes one batch of entries; returns how many entries it wrote. Public for tests. */
  async consumeOnce(): Promise<number> {
    const client = await this.db.pool.connect();
    let broken = false;
    try {
      await client.query(BEGIN_WRITE);
      const { rows: entries } = await client.query<{ id: string; payload: string }>(
        'SELECT id, payload FROM telemetry_ingest_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED',
        [this.batchEntries],
      );
      if (entries.length === 0) {
        await client.query('COMMIT');
        return 0;
      }
      const rows = entries.flatMap((e) => decodeRows(e.payload));
      // Partitions are created on other connections (committed at once), not inside this transaction.
      await this.partitions.ensureFor(rows);
      const t0 = performance.now();
      const result = await writeRows(client, rows);
      await client.query('DELETE FROM telemetry_ingest_queue WHERE id = ANY($1::int8[])', [entries.map((e) => e.id)]);
      await client.query('COMMIT');
      await this.hooks.afterCommit(result).catch((err: unknown) => this.logger.warn({ err }, 'post-commit cache update failed'));
      this.hooks.published(result, rows.length, (performance.now() - t0) / 1000);
      return entries.length;
    } catch (err) {
      broken = await client.query('ROLLBACK').then(
        () => false,
        () => true,
      );
      if ((err as { code?: string }).code === '23514') this.partitions.forget();
      throw err;
    } finally {
      client.release(broken);
    }
  }

  private async consume(): Promise<void> {
    while (this.running) {
      let n = 0;
      try {
        n = await this.consumeOnce();
      } catch (err) {
        this.logger.warn({ err }, 'async ingestion consumer failed; retrying');
        await this.sleep(1000);
        continue;
      }
      if (n === 0) await this.sleep(this.pollMs);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }
}

/** A batch larger than the whole queue: no retry could succeed, so a 413, not a 503. */
export function batchAboveQueueMax(max: number, n: number): AppError {
  return new AppError(413, 'BATCH_ABOVE_QUEUE_MAX', `${n} readings exceed the ingestion queue's whole bound of ${max} (INGEST_QUEUE_MAX); send smaller batches or write them synchronously`, [{ path: '/readings', message: `more than ${max} readings` }]);
}

export function queueFull(max: number): AppError {
  return new AppError(503, 'QUEUE_FULL', `the ingestion queue holds its maximum of ${max} readings; retry later`, [], QUEUE_FULL_RETRY_AFTER);
}
