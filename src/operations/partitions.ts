import type pg from 'pg';

/** Milliseconds in one UTC day. */
export const DAY_MS = 86_400_000;

/** Name of the daily raw-telemetry partition holding UTC day `dayStartMs` (e.g. `telemetry_20261127`). */
export function partitionName(dayStartMs: number): string {
  return `telemetry_${new Date(dayStartMs).toISOString().slice(0, 10).replaceAll('-', '')}`;
}

/** Start (epoch ms, UTC midnight) of the day a partition name stands for; undefined for other names. */
export function partitionDay(name: string): number | undefined {
  const m = /^telemetry_(\d{4})(\d{2})(\d{2})$/.exec(name);
  if (!m) return undefined;
  const ms = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  return partitionName(ms) === name ? ms : undefined;
}

/** UTC midnight (epoch ms) at or before `ms`. */
export function utcDayStart(ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS;
}

/**
 * Creates the daily partitions from yesterday through `daysAhead` days after today (UTC),
 * so ingestion never has to create one on its hot path at midnight. Yesterday is included
 * because late readings of the previous day keep arriving after midnight.
 *
 * A missing partition is made as a plain table and then attached: ATTACH PARTITION takes a
 * SHARE UPDATE EXCLUSIVE lock on `telemetry`, which inserts and reads do not conflict with,
 * whereas CREATE TABLE ... PARTITION OF needs ACCESS EXCLUSIVE and, queued behind one long
 * query, would stall every insert queued behind it. `lock_timeout` bounds the wait anyway;
 * a day not created this turn is created on the next (they are made a week ahead).
 * Serialised with `ensure_telemetry_partition` through the same advisory lock.
 * Returns the partition names that exist afterwards.
 * @param daysAhead whole days after today, 0–366
 */
export async function ensurePartitionsAhead(pool: pg.Pool, now: number, daysAhead: number, lockTimeoutMs = 2000): Promise<string[]> {
  const today = utcDayStart(now);
  const names: string[] = [];
  for (let d = -1; d <= daysAhead; d++) {
    const dayMs = today + d * DAY_MS;
    const name = partitionName(dayMs);
    const exists = await pool.query('SELECT to_regclass($1) IS NOT NULL AS ok', [name]);
    if (exists.rows[0].ok) {
      names.push(name);
      continue;
    }
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(lockTimeoutMs))}`);
      await client.query(`SELECT pg_advisory_xact_lock(7460002, ($1::date - date '2000-01-01'))`, [new Date(dayMs).toISOString().slice(0, 10)]);
      const again = await client.query('SELECT to_regclass($1) IS NOT NULL AS ok', [name]);
      if (!again.rows[0].ok) {
        await client.query(`CREATE TABLE ${name} (LIKE telemetry INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`);
        await client.query(`ALTER TABLE telemetry ATTACH PARTITION ${name} FOR VALUES FROM ('${new Date(dayMs).toISOString()}') TO ('${new Date(dayMs + DAY_MS).toISOString()}')`);
      }
      await client.query('COMMIT');
      names.push(name);
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      const code = (err as { code?: string }).code;
      // 42P07: created by another session a moment ago (the re-check can read a catalog cache
      // not yet refreshed after the advisory lock); it exists, which is all we want.
      if (code === '42P07') names.push(name);
      // 55P03 lock_not_available: busy right now; the next run tries again.
      else if (code !== '55P03') throw err;
    } finally {
      client.release();
    }
  }
  return names;
}
