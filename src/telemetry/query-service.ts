/**
 * Historical queries: input rules, bucket layout, aggregates, fills and output formats of
 * `GET /api/telemetry/:nodeId/historical`. Aggregation itself is `aggregatePeriods`.
 */
import type { Db } from '../db/pool.js';
import { timezoneCatalog } from '../db/timezones.js';
import { badRequest, notFound, type ErrorDetail } from '../http/errors.js';
import { cursorScope, decodeCursor, encodeCursor, invalidCursor } from '../http/cursor.js';
import { parseTime } from '../http/time.js';
import type { Metrics } from '../metrics/metrics.js';
import type { NodeRegistry } from '../metadata/registry.js';
import { DAY_MS, HOUR_MS, formatInZone, intervalPeriods, isValidTimeZone, type Period } from './buckets.js';
import { aggregatePeriods, roundSig, withPowerFirst } from './query-engine.js';
import type { FieldAgg } from './rollup-compute.js';
import { FIELD_BY_NAME, NUMERIC_FIELDS, type NumericField } from './rollup-fields.js';
import { DEFAULT_INTERVAL_SECONDS } from './rollup-refresher.js';
import { negotiate, type Offer } from '../http/negotiate.js';

const HISTORICAL_FORMATS: readonly Offer<'json' | 'csv'>[] = [
  { type: 'application/json', value: 'json' },
  { type: 'text/csv', value: 'csv' },
];

export const INTERVALS = ['raw', '1m', '5m', '15m', '30m', '1h', '1d', '1w', '1mo'] as const;
export type Interval = (typeof INTERVALS)[number];
export const AGGS = ['avg', 'min', 'max', 'sum', 'count', 'first', 'last', 'twa'] as const;
export type Agg = (typeof AGGS)[number];
export const FILLS = ['none', 'null', 'previous', 'linear'] as const;
export type Fill = (typeof FILLS)[number];

/** Longest range a query may span: two years, one of them a leap year (ms). */
export const MAX_RANGE_MS = 731 * DAY_MS;
/** Most buckets one answer may hold. */
export const MAX_BUCKETS = 100_000;
export const DEFAULT_AGGS: readonly Agg[] = ['avg', 'min', 'max'];

/** The query string as received (validated for shape by the route schema). */
export interface HistoricalInput {
  nodeId: string;
  from: string;
  to: string;
  interval?: Interval;
  fields?: string;
  agg?: string;
  tz?: string;
  fill?: Fill;
  maxGap?: number;
  format?: 'json' | 'csv';
  limit?: number;
  cursor?: string;
  /** The request's Accept header: `text/csv` selects CSV when `format` is absent. */
  accept?: string;
}

export interface HistoricalAnswer {
  /** `raw`, `15m`, `1h` or `1d`: the coarsest source the planner used. */
  tier: string;
  /** All sources used, coarsest first (for `X-Rollup-Sources`). */
  sources: string[];
  format: 'json' | 'csv';
  /** CSV text; for JSON, the answer object or (bucketed answers) its JSON text. */
  body: unknown;
  /** Next page of raw readings (CSV answers carry it in a header). */
  nextCursor?: string | null;
}

export interface QueryDeps {
  db: Db;
  nodes: NodeRegistry;
  metrics: Metrics;
}

/**
 * The interval used when none is asked for: the finest that keeps the answer under about a
 * thousand buckets.
 */
export function defaultInterval(rangeMs: number): Interval {
  if (rangeMs <= 6 * HOUR_MS) return '1m';
  if (rangeMs <= DAY_MS) return '5m';
  if (rangeMs <= 3 * DAY_MS) return '15m';
  if (rangeMs <= 7 * DAY_MS) return '30m';
  if (rangeMs <= 31 * DAY_MS) return '1h';
  if (rangeMs <= 366 * DAY_MS) return '1d';
  return '1w';
}

function parseList<T extends string>(raw: string | undefined, path: string, allowed: (s: string) => T | undefined, what: string): T[] | undefined {
  if (raw === undefined) return undefined;
  const items = raw.split(',').map((s) => s.trim());
  const details: ErrorDetail[] = [];
  const out: T[] = [];
  items.forEach((item, i) => {
    const v = allowed(item);
    if (v === undefined) details.push({ path, message: item === '' ? `empty ${what} at position ${i + 1}` : `unknown ${what} "${item}"` });
    else if (!out.includes(v)) out.push(v);
  });
  if (details.length > 0) throw badRequest(`${path.slice(1)}: ${details.map((d) => d.message).join('; ')}`, details, `INVALID_${what.toUpperCase()}`);
  return out;
}

function requireTimeParam(value: string, path: string): number {
  const t = parseTime(value);
  if (t === undefined) throw badRequest(`${path.slice(1)} must be an RFC 3339 time with offset or epoch milliseconds`, [{ path, message: 'invalid time' }], 'INVALID_TIME');
  return t;
}

export class TelemetryQueryService {
  constructor(private readonly deps: QueryDeps) {}

  /** Answers one historical query. Throws AppError (400/404) on bad input or an unknown node. */
  async historical(input: HistoricalInput): Promise<HistoricalAnswer> {
    const from = requireTimeParam(input.from, '/from');
    const to = requireTimeParam(input.to, '/to');
    if (!(from < to)) throw badRequest('from must be before to', [{ path: '/to', message: 'must be after from' }], 'INVALID_RANGE');
    if (to - from > MAX_RANGE_MS) throw badRequest('the range may span at most two years (731 days)', [{ path: '/to', message: 'more than 731 days after from' }], 'RANGE_TOO_LARGE');
    const fieldList = parseList(input.fields, '/fields', (s) => FIELD_BY_NAME.get(s)?.name, 'field');
    if (fieldList && fieldList.length === 0) throw badRequest('fields must name at least one field', [{ path: '/fields', message: 'empty' }], 'INVALID_FIELD');
    const aggs = parseList(input.agg, '/agg', (s) => (AGGS as readonly string[]).includes(s) ? (s as Agg) : undefined, 'agg') ?? [...DEFAULT_AGGS];
    const tzGiven = input.tz !== undefined;
    const tz = input.tz ?? 'UTC';
    if (!isValidTimeZone(tz) || (tzGiven && !(await timezoneCatalog(this.deps.db.readPool).isKnown(tz)))) {
      throw badRequest(`tz "${tz}" is not an IANA time zone (names are spelt exactly, as in America/New_York)`, [{ path: '/tz', message: 'unknown time zone' }], 'INVALID_TIMEZONE');
    }
    const format: 'json' | 'csv' = input.format ?? negotiate(input.accept, HISTORICAL_FORMATS, 'json');
    const interval = input.interval ?? defaultInterval(to - from);
    const node = await this.node(input.nodeId);
    const capMs = 3 * node.telemetryIntervalSeconds * 1000;
    const fmt = (ms: number) => (tzGiven ? formatInZone(ms, tz) : new Date(ms).toISOString());
    const fields = (fieldList ?? ['powerKw']).map((n) => FIELD_BY_NAME.get(n) as NumericField);

    if (interval === 'raw') return this.raw(input, node.nodeId, from, to, fieldList ? fields : undefined, format, fmt, tz);

    const periods = intervalPeriods(interval, tz, from, to);
    if (periods.length > MAX_BUCKETS) {
      throw badRequest(`${periods.length} buckets of ${interval} exceed the limit of ${MAX_BUCKETS}; choose a coarser interval or a shorter range`, [{ path: '/interval', message: 'too many buckets' }], 'TOO_MANY_BUCKETS');
    }
    // Edge buckets are cut to [from, to): only data inside the range counts.
    const clipped = periods.map((p) => ({ start: Math.max(p.start, from), end: Math.min(p.end, to) }));
    const engineFields = withPowerFirst(fields);
    const fill = input.fill ?? 'none';
    // Reading times matter only to first/last (which bring them) and to the gap rule of the
    // previous/linear fills; energy extras not at all.
    const parts = { firstLast: aggs.includes('first') || aggs.includes('last'), times: fill === 'previous' || fill === 'linear', extras: false };
    const result = await this.deps.metrics.timeStore('telemetry_query', 'historical', () => aggregatePeriods(this.deps.db.readPool, node.nodeId, capMs, clipped, engineFields, parts));
    const maxGapMs = (input.maxGap ?? 3 * node.telemetryIntervalSeconds) * 1000;
    // The gap rule looks past `to`: a bucket near the end of the range is filled according to the
    // node's next reading, wherever the range happens to end.
    const nextAfter = parts.times ? await this.nextReadingTime(node.nodeId, to, maxGapMs) : Infinity;
    const rows = buildBuckets(periods, clipped, result.partials.map((p) => p.fields), engineFields, fields, aggs, fill, maxGapMs, nextAfter);

    if (format === 'csv') return { tier: result.tier, sources: result.sources, format, body: toCsv(rows, fields, aggs, fill, fmt) };
    const head = { nodeId: node.nodeId, from: fmt(from), to: fmt(to), interval, tz };
    const tail = { fields: fields.map((f) => f.name), agg: aggs, fill };
    return { tier: result.tier, sources: result.sources, format, body: bucketsJson(head, rows, tail, fields, aggs, fmt) };
  }

  /**
   * For the fills' gap rule at the end of a range: the measurement time of the node's first reading
   * at or after `to` when it lies within `maxGapMs` of `to`; `to + maxGapMs` when there is a later
   * reading beyond that (a gap longer than maxGap follows every reading of the range, whatever its
   * exact end); Infinity when the node has no reading at or after `to`. The probe is bounded by
   * `to + maxGapMs`, so it reads a partition or two, not every one after `to`; the node's latest
   * reading (telemetry_latest, kept by every write) tells whether anything lies beyond.
   */
  private async nextReadingTime(nodeId: string, to: number, maxGapMs: number): Promise<number> {
    const { rows } = await this.deps.db.readPool.query<{ next: number | null; latest: number | null }>(
      `SELECT (SELECT (extract(epoch FROM ts) * 1000)::float8 FROM telemetry WHERE node_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT 1) AS next,
              (SELECT (extract(epoch FROM ts) * 1000)::float8 FROM telemetry_latest WHERE node_id = $1) AS latest`,
      [nodeId, new Date(to).toISOString(), new Date(to + maxGapMs).toISOString()],
    );
    const { next, latest } = rows[0];
    if (next !== null) return next;
    if (latest !== null) return latest >= to ? to + maxGapMs : Infinity;
    // No latest row (readings that did not come through ingestion): look past `to` unbounded.
    const { rows: later } = await this.deps.db.readPool.query<{ ts: number }>(
      'SELECT (extract(epoch FROM ts) * 1000)::float8 AS ts FROM telemetry WHERE node_id = $1 AND ts >= $2 ORDER BY ts LIMIT 1',
      [nodeId, new Date(to).toISOString()],
    );
    return later.length ? later[0].ts : Infinity;
  }

  private async node(nodeId: string): Promise<{ nodeId: string; telemetryIntervalSeconds: number }> {
    const info = this.deps.nodes.get(nodeId);
    if (info) return info;
    // UNKNOWN_NODES=accept stores telemetry of nodes without metadata: they are known by their readings.
    const { rows } = await this.deps.db.readPool.query('SELECT 1 FROM telemetry_latest WHERE node_id = $1', [nodeId]);
    if (rows.length > 0) return { nodeId, telemetryIntervalSeconds: DEFAULT_INTERVAL_SECONDS };
    throw notFound(`node ${nodeId} is unknown`, 'NODE_NOT_FOUND');
  }

  private async raw(input: HistoricalInput, nodeId: string, from: number, to: number, fields: NumericField[] | undefined, format: 'json' | 'csv', fmt: (ms: number) => string, tz: string): Promise<HistoricalAnswer> {
    const limit = input.limit ?? 100;
    // The cursor belongs to the node; from/to may move between pages.
    const scope = cursorScope('raw', nodeId);
    const cursor = decodeCursor(input.cursor, 1, scope);
    if (cursor && typeof cursor[0] !== 'number') throw invalidCursor();
    // Clamped to the range: a cursor past `to` (issued for another range) gives an empty page.
    const after = cursor ? Math.min(to, Math.max(from, (cursor[0] as number) + 1)) : from;
    const numeric = fields ?? NUMERIC_FIELDS;
    const cols = numeric.map((f) => f.column).join(', ');
    const full = fields === undefined;
    const { rows } = await this.deps.metrics.timeStore('telemetry_query', 'raw', () =>
      this.deps.db.readPool.query({
        text: `SELECT (extract(epoch FROM ts) * 1000)::float8 AS t, ${cols}${full ? ', health_status, quality, extra' : ''}
               FROM telemetry WHERE node_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4`,
        values: [nodeId, new Date(after).toISOString(), new Date(to).toISOString(), limit + 1],
        rowMode: 'array',
      }),
    );
    const page = (rows as unknown[][]).slice(0, limit);
    const nextCursor = rows.length > limit ? encodeCursor(scope, [page[page.length - 1][0] as number]) : null;
    const names = [...numeric.map((f) => f.name), ...(full ? ['healthStatus', 'quality', 'extra'] : [])];
    if (format === 'csv') {
      const lines = [['timestamp', ...names.filter((n) => n !== 'extra')].join(',')];
      for (const r of page) {
        const cells = [fmt(r[0] as number)];
        names.forEach((n, i) => {
          if (n !== 'extra') cells.push(csvCell(r[i + 1] as string | number | null));
        });
        lines.push(cells.join(','));
      }
      return { tier: 'raw', sources: ['raw'], format, body: `${lines.join('\n')}\n`, nextCursor };
    }
    const items = page.map((r) => {
      const o: Record<string, unknown> = { timestamp: fmt(r[0] as number) };
      names.forEach((n, i) => {
        const v = r[i + 1];
        if (v !== null && v !== undefined) o[n] = v;
      });
      return o;
    });
    return { tier: 'raw', sources: ['raw'], format, body: { nodeId, from: fmt(from), to: fmt(to), interval: 'raw', tz, items, nextCursor }, nextCursor };
  }
}

interface BucketRow {
  start: number;
  count: number;
  filled: boolean;
  /** [field][agg] */
  values: (number | null)[][];
}

function aggValue(a: FieldAgg, agg: Agg): number | null {
  switch (agg) {
    case 'count':
      return a.n;
    case 'twa':
      return a.held > 0 ? roundSig(a.integral / a.held) : null;
    default:
      if (a.n === 0) return null;
      if (agg === 'avg') return roundSig(a.sum / a.n);
      if (agg === 'sum') return roundSig(a.sum);
      if (agg === 'min') return a.min;
      if (agg === 'max') return a.max;
      if (agg === 'first') return a.firstV;
      return a.lastV;
  }
}

/**
 * Turns partials into answer buckets and applies the fill. A bucket has data when a reading
 * lies in it, or when the hold of a reading carrying one of the requested fields reaches into it
 * (a held reading without them gives the answer nothing to show). `previous`/`linear` fill a missing value only
 * when the readings on either side of the bucket are at most `maxGapMs` apart; after the range's
 * last reading the reading on the right is the node's next one at or after `to` (`nextAfter`),
 * and when the node has none yet, the bucket's end stands for it (a value is carried at most
 * `maxGapMs` past the newest reading).
 */
export function buildBuckets(periods: readonly Period[], clipped: readonly { start: number; end: number }[], partials: FieldAgg[][], engineFields: readonly NumericField[], fields: readonly NumericField[], aggs: readonly Agg[], fill: Fill, maxGapMs: number, nextAfter = Infinity): BucketRow[] {
  const pos = fields.map((f) => engineFields.indexOf(f));
  const all: (BucketRow & { hasData: boolean; firstTs: number; lastTs: number; end: number })[] = periods.map((p, i) => {
    const power = partials[i][0];
    return {
      start: p.start,
      end: clipped[i].end,
      count: power.n,
      filled: false,
      hasData: power.n > 0 || pos.some((k) => partials[i][k].held > 0),
      firstTs: power.firstTs,
      lastTs: power.lastTs,
      values: pos.map((k) => aggs.map((a) => aggValue(partials[i][k], a))),
    };
  });
  if (fill === 'none') return all.filter((b) => b.hasData).map(strip);
  if (fill === 'null') return all.map(strip);
  const n = all.length;
  const prevLast: number[] = new Array(n);
  const nextFirst: number[] = new Array(n);
  let last = -Infinity;
  for (let i = 0; i < n; i++) {
    prevLast[i] = last;
    if (all[i].count > 0) last = all[i].lastTs;
  }
  let first = Infinity;
  for (let i = n - 1; i >= 0; i--) {
    nextFirst[i] = first;
    if (all[i].count > 0) first = all[i].firstTs;
  }
  const out = all.map((b) => ({ ...b, values: b.values.map((v) => [...v]) }));
  for (let f = 0; f < fields.length; f++) {
    for (let a = 0; a < aggs.length; a++) {
      let prevIdx = -1;
      for (let i = 0; i < n; i++) {
        const v = all[i].values[f][a];
        if (v !== null) {
          prevIdx = i;
          continue;
        }
        if (prevIdx < 0 || !Number.isFinite(prevLast[i])) continue;
        const right = Number.isFinite(nextFirst[i]) ? nextFirst[i] : Number.isFinite(nextAfter) ? nextAfter : all[i].end;
        if (right - prevLast[i] > maxGapMs) continue;
        if (fill === 'previous') {
          out[i].values[f][a] = all[prevIdx].values[f][a];
          out[i].filled = true;
        } else {
          let k = i + 1;
          while (k < n && all[k].values[f][a] === null) k++;
          if (k >= n || !Number.isFinite(nextFirst[i])) continue;
          const v0 = all[prevIdx].values[f][a] as number;
          const v1 = all[k].values[f][a] as number;
          const x = (all[i].start - all[prevIdx].start) / (all[k].start - all[prevIdx].start);
          out[i].values[f][a] = roundSig(v0 + (v1 - v0) * x);
          out[i].filled = true;
        }
      }
    }
  }
  return out.map(strip);
}

function strip(b: BucketRow): BucketRow {
  return { start: b.start, count: b.count, filled: b.filled, values: b.values };
}

const jsonNumber = (v: number | null) => (v === null || !Number.isFinite(v) ? 'null' : String(v));

/**
 * The bucketed answer as JSON text, written directly: a year of hourly buckets is thousands of
 * small objects, which building and then serialising (the response schema lets bucket objects
 * carry any field, so the serialiser falls back to generic code for them) cost more than the
 * database work of the query. The same text as the serialiser wrote: the contract's keys (`head`),
 * `buckets`, then the query's echo (`tail`).
 */
function bucketsJson(head: Record<string, unknown>, rows: readonly BucketRow[], tail: Record<string, unknown>, fields: readonly NumericField[], aggs: readonly Agg[], fmt: (ms: number) => string): string {
  const headJson = JSON.stringify(head);
  const tailJson = JSON.stringify(tail);
  const keys = fields.map((f) => `,${JSON.stringify(f.name)}:{`);
  const aggKeys = aggs.map((a, j) => `${j > 0 ? ',' : ''}${JSON.stringify(a)}:`);
  const parts: string[] = [];
  for (const b of rows) {
    let o = `{"start":${JSON.stringify(fmt(b.start))},"count":${b.count}${b.filled ? ',"filled":true' : ''}`;
    for (let i = 0; i < fields.length; i++) {
      o += keys[i];
      const vs = b.values[i];
      for (let j = 0; j < aggs.length; j++) o += aggKeys[j] + jsonNumber(vs[j]);
      o += '}';
    }
    parts.push(`${o}}`);
  }
  return `${headJson.slice(0, -1)},"buckets":[${parts.join(',')}],${tailJson.slice(1)}`;
}

function csvCell(v: string | number | null): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return String(v);
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

function toCsv(rows: readonly BucketRow[], fields: readonly NumericField[], aggs: readonly Agg[], fill: Fill, fmt: (ms: number) => string): string {
  const withFilled = fill === 'previous' || fill === 'linear';
  const header = ['start', 'count', ...fields.flatMap((f) => aggs.map((a) => `${f.name}_${a}`)), ...(withFilled ? ['filled'] : [])];
  const lines = [header.join(',')];
  for (const b of rows) {
    const cells = [fmt(b.start), String(b.count), ...b.values.flatMap((vs) => vs.map((v) => csvCell(v)))];
    if (withFilled) cells.push(b.filled ? 'true' : 'false');
    lines.push(cells.join(','));
  }
  return `${lines.join('\n')}\n`;
}
