/**
 * Aggregation of raw readings into period partials: the single definition of the hold rule,
 * used by the rollup refresher (15-minute buckets) and by queries over unrefreshed ranges, so
 * rollups and raw computations agree by construction.
 *
 * Hold rule: a reading at `t` holds its values over `[t, min(next reading's t, t + cap))`, where
 * cap = 3 × telemetryIntervalSeconds; a longer gap is missing time. A reading whose field is null
 * holds nothing for that field but still ends the previous reading's hold.
 */
import { UNAVAILABLE_HEALTH } from './rollup-fields.js';

/** Aggregate pieces of one numeric field over a period; they compose by `mergeAgg`. */
export interface FieldAgg {
  /** Readings with a value whose timestamp lies in the period. */
  n: number;
  /** Sum of those values (0 when n = 0). */
  sum: number;
  /** Smallest / largest value (Infinity / -Infinity when n = 0). */
  min: number;
  max: number;
  /** Value and time (epoch ms) of the earliest / latest reading in the period (time ±Infinity when n = 0). */
  firstV: number;
  firstTs: number;
  lastV: number;
  lastTs: number;
  /** Σ value × seconds held within the period (the hold may come from a reading before the period). */
  integral: number;
  /** Seconds held within the period. */
  held: number;
}

/** powerKw-only pieces. */
export interface PowerExtras {
  /** Energy exported (positive power) within the period, kWh ≥ 0. */
  exportedKwh: number;
  /** Energy imported (negative power) within the period, kWh ≥ 0. */
  importedKwh: number;
  /** Seconds held by readings whose healthStatus is not fault/offline. */
  availableS: number;
}

export function emptyAgg(): FieldAgg {
  return { n: 0, sum: 0, min: Infinity, max: -Infinity, firstV: NaN, firstTs: Infinity, lastV: NaN, lastTs: -Infinity, integral: 0, held: 0 };
}

export function emptyExtras(): PowerExtras {
  return { exportedKwh: 0, importedKwh: 0, availableS: 0 };
}

/** Adds `b` into `a` (periods must not overlap). */
export function mergeAgg(a: FieldAgg, b: FieldAgg): void {
  a.n += b.n;
  a.sum += b.sum;
  if (b.min < a.min) a.min = b.min;
  if (b.max > a.max) a.max = b.max;
  if (b.firstTs < a.firstTs) {
    a.firstTs = b.firstTs;
    a.firstV = b.firstV;
  }
  if (b.lastTs > a.lastTs) {
    a.lastTs = b.lastTs;
    a.lastV = b.lastV;
  }
  a.integral += b.integral;
  a.held += b.held;
}

export function mergeExtras(a: PowerExtras, b: PowerExtras): void {
  a.exportedKwh += b.exportedKwh;
  a.importedKwh += b.importedKwh;
  a.availableS += b.availableS;
}

/** Readings of one node in column form, sorted by time, no duplicate times. */
export interface ReadingColumns {
  /** Measurement times, epoch ms, strictly increasing. */
  ts: number[];
  /** Per requested field (same order as the caller's field list): value or null. */
  values: (number | null)[][];
  /** healthStatus per reading (null when not reported). */
  health: (string | null)[];
}

/** Partials of one period: per field (caller's order), plus power extras when power is field 0. */
export interface PeriodPartial {
  fields: FieldAgg[];
  extras: PowerExtras;
}

/**
 * Aggregates readings into `periods` (sorted, non-overlapping half-open `[start, end)` ms).
 * The readings must include every reading in `[period.start - capMs, period.end)` of every
 * period (they may include more). `powerIndex` is the index of powerKw among the fields, or -1:
 * extras come from it.
 */
export function accumulate(readings: ReadingColumns, periods: readonly { start: number; end: number }[], capMs: number, powerIndex: number): PeriodPartial[] {
  const nf = readings.values.length;
  const out: PeriodPartial[] = periods.map(() => ({ fields: Array.from({ length: nf }, emptyAgg), extras: emptyExtras() }));
  const { ts, values, health } = readings;
  let p = 0;
  for (let i = 0; i < ts.length; i++) {
    const t = ts[i];
    const next = i + 1 < ts.length ? ts[i + 1] : Infinity;
    const holdEnd = Math.min(next, t + capMs);
    while (p < periods.length && periods[p].end <= t) p++;
    if (p >= periods.length) break;
    const available = !UNAVAILABLE_HEALTH.has(health[i] ?? '');
    for (let q = p; q < periods.length && periods[q].start < holdEnd; q++) {
      const per = periods[q];
      const part = out[q];
      const inside = t >= per.start && t < per.end;
      const overlapMs = Math.min(holdEnd, per.end) - Math.max(t, per.start);
      const secs = overlapMs > 0 ? overlapMs / 1000 : 0;
      for (let f = 0; f < nf; f++) {
        const v = values[f][i];
        if (v === null) continue;
        const a = part.fields[f];
        if (inside) {
          a.n++;
          a.sum += v;
          if (v < a.min) a.min = v;
          if (v > a.max) a.max = v;
          if (t < a.firstTs) {
            a.firstTs = t;
            a.firstV = v;
          }
          if (t > a.lastTs) {
            a.lastTs = t;
            a.lastV = v;
          }
        }
        if (secs > 0) {
          a.integral += v * secs;
          a.held += secs;
          if (f === powerIndex) {
            if (v > 0) part.extras.exportedKwh += (v * secs) / 3600;
            else if (v < 0) part.extras.importedKwh += (-v * secs) / 3600;
            if (available) part.extras.availableS += secs;
          }
        }
      }
    }
  }
  return out;
}

/** Merges ranges `[lo, hi)` (sorted by lo) that lie within `gap` of each other. */
export function mergeRanges(ranges: { lo: number; hi: number }[], gap: number): { lo: number; hi: number }[] {
  const sorted = [...ranges].sort((a, b) => a.lo - b.lo);
  const out: { lo: number; hi: number }[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.lo - gap <= last.hi) last.hi = Math.max(last.hi, r.hi);
    else out.push({ ...r });
  }
  return out;
}
