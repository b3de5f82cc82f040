import type { Queryable } from '../db/pool.js';

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
 * Returns the partition names ensured (existing or new).
 * @param daysAhead whole days after today, 0–366
 */
export async function ensurePartitionsAhead(db: Queryable, now: number, daysAhead: number): Promise<string[]> {
  const today = utcDayStart(now);
  const names: string[] = [];
  for (let d = -1; d <= daysAhead; d++) {
    const day = new Date(today + d * DAY_MS).toISOString().slice(0, 10);
    const { rows } = await db.query<{ name: string }>('SELECT ensure_telemetry_partition($1::date) AS name', [day]);
    names.push(rows[0].name);
  }
  return names;
}
