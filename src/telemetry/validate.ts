import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { ErrorDetail } from '../http/errors.js';
import { NODE_ID_PATTERN } from '../http/schemas.js';
import { parseBodyTime, parseTime, TIME_TEXT_MAX } from '../http/time.js';
import { toDetails } from '../http/validation.js';
import type { NodeInfo } from '../metadata/registry.js';
import { MAX_JSON_DEPTH, nestedDeeperThan } from '../http/json-depth.js';

/**
 * The numeric reading fields, in storage order: API name and SQL column. The COPY line, the
 * staging table and the latest-reading JSON all follow this order.
 */
export const NUMERIC_FIELDS = [
  ['powerKw', 'power_kw'],
  ['reactivePowerKvar', 'reactive_power_kvar'],
  ['voltageV', 'voltage_v'],
  ['currentA', 'current_a'],
  ['frequencyHz', 'frequency_hz'],
  ['stateOfChargePct', 'state_of_charge_pct'],
  ['temperatureC', 'temperature_c'],
  ['irradianceWm2', 'irradiance_wm2'],
  ['windSpeedMs', 'wind_speed_ms'],
  ['gridImportKw', 'grid_import_kw'],
  ['gridExportKw', 'grid_export_kw'],
] as const;

export const HEALTH_STATUSES = ['ok', 'warning', 'fault', 'offline'] as const;
export const QUALITIES = ['measured', 'estimated', 'interpolated'] as const;

/** Largest `extra` object, measured as its JSON text in UTF-8 bytes. */
export const EXTRA_MAX_BYTES = 4096;
/** How far ahead of the server clock a measurement time may be (ms). */
export const FUTURE_TOLERANCE_MS = 5 * 60_000;
/** Interval assumed for nodes without metadata (accepted with UNKNOWN_NODES=accept), seconds. */
export const DEFAULT_INTERVAL_SECONDS = 60;

/** flags bit: |powerKw| > 1.1 × capacityKw. */
export const FLAG_OUT_OF_RANGE = 1;
/** flags bit: received more than 3 × telemetryIntervalSeconds after the measurement time. */
export const FLAG_LATE = 2;
/** flags bit, set by the writer: this reading replaced an earlier, different one (a correction). */
export const FLAG_CORRECTED = 4;

/**
 * One validated reading as the writer stores it. Numbers are finite; absent optional fields are null.
 * `values` holds the NUMERIC_FIELDS in order (index 0, powerKw, is never null).
 */
export interface IngestRow {
  nodeId: string;
  /** Measurement time, epoch ms (sub-millisecond input digits are truncated). */
  ts: number;
  /** Arrival time at the API, epoch ms. */
  receivedAt: number;
  values: (number | null)[];
  healthStatus: string | null;
  quality: string | null;
  /** `extra` as JSON text, or null. */
  extra: string | null;
  /** Soft-anomaly bits (FLAG_OUT_OF_RANGE | FLAG_LATE). */
  flags: number;
  /** The node's telemetryIntervalSeconds (DEFAULT_INTERVAL_SECONDS for unknown nodes), s. */
  intervalS: number;
}

/** A rejected reading: its index in the request, its nodeId when it had a usable one, and every problem. */
export interface Rejection {
  index: number;
  nodeId: string | null;
  errors: ErrorDetail[];
}

/** Why a reading was rejected, as a metrics label (the first problem decides). */
export type RejectReason = 'schema' | 'timestamp' | 'future' | 'retention' | 'extra_size' | 'unknown_node' | 'node_mismatch';

const NODE_ID_RE = new RegExp(NODE_ID_PATTERN);
/** In JSON.stringify output: an escaped NUL, or an escaped surrogate (paired ones are written raw). */
const UNSTORABLE_JSON = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i;

/**
 * Largest magnitude of any numeric field. No site measures anything near it (10^12 kW is a
 * thousand times the world's generating capacity), and it keeps every sum and time integral a
 * rollup or analytic forms over two years far inside float8's range: a finite value such as
 * 1.7e308 would overflow them.
 */
export const MAX_MAGNITUDE = 1e12;

/** Physically impossible values, per API field name: tighter inclusive bounds than ±MAX_MAGNITUDE. */
const PHYSICAL_BOUNDS: Readonly<Partial<Record<(typeof NUMERIC_FIELDS)[number][0], { minimum?: number; maximum?: number }>>> = {
  voltageV: { minimum: 0 },
  frequencyHz: { minimum: 40, maximum: 70 },
  stateOfChargePct: { minimum: 0, maximum: 100 },
  temperatureC: { minimum: -273.15 },
  windSpeedMs: { minimum: 0 },
};

/** The inclusive bounds of a numeric field (the validating schema's and the documented one's). */
export function fieldBounds(api: (typeof NUMERIC_FIELDS)[number][0]): { minimum: number; maximum: number } {
  return { minimum: -MAX_MAGNITUDE, maximum: MAX_MAGNITUDE, ...PHYSICAL_BOUNDS[api] };
}

function readingSchema(withNodeId: boolean): object {
  const properties: Record<string, object> = {
    timestamp: { anyOf: [{ type: 'string', minLength: 1, maxLength: TIME_TEXT_MAX }, { type: 'integer', minimum: 0 }] },
    ...Object.fromEntries(NUMERIC_FIELDS.map(([api]) => [api, { type: 'number', ...fieldBounds(api) }])),
    healthStatus: { type: 'string', enum: [...HEALTH_STATUSES] },
    quality: { type: 'string', enum: [...QUALITIES] },
    extra: { type: 'object' },
    nodeId: { type: 'string', pattern: NODE_ID_PATTERN },
  };
  return {
    type: 'object',
    properties,
    required: withNodeId ? ['nodeId', 'timestamp', 'powerKw'] : ['timestamp', 'powerKw'],
    additionalProperties: false,
  };
}

/** NUMERIC_FIELDS position by API name, and each position's inclusive bounds (those of the schema, fieldBounds). */
const FIELD_INDEX: Record<string, number | undefined> = Object.assign(Object.create(null) as Record<string, number>, Object.fromEntries(NUMERIC_FIELDS.map(([api], i) => [api, i])));
const FIELD_MIN = NUMERIC_FIELDS.map(([api]) => fieldBounds(api).minimum);
const FIELD_MAX = NUMERIC_FIELDS.map(([api]) => fieldBounds(api).maximum);
const HEALTH_SET = new Set<string>(HEALTH_STATUSES);
const QUALITY_SET = new Set<string>(QUALITIES);
const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** The two decimal digits at `i` as a number, or -1. */
function twoDigits(s: string, i: number): number {
  const a = s.charCodeAt(i) - 48;
  const b = s.charCodeAt(i + 1) - 48;
  return a >= 0 && a <= 9 && b >= 0 && b <= 9 ? a * 10 + b : -1;
}

/**
 * `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.sssZ` (the forms clients send nearly always) to
 * epoch ms without regular expressions or Date parsing; undefined for any other form or any doubt
 * (the caller then uses parseBodyTime, whose result this equals whenever it answers).
 */
export function parseIsoFast(s: string): number | undefined {
  const n = s.length;
  if ((n !== 20 && n !== 24) || s.charCodeAt(n - 1) !== 90 /* Z */) return undefined;
  if (s.charCodeAt(4) !== 45 || s.charCodeAt(7) !== 45 || s.charCodeAt(10) !== 84 || s.charCodeAt(13) !== 58 || s.charCodeAt(16) !== 58) return undefined;
  const y1 = twoDigits(s, 0);
  const y2 = twoDigits(s, 2);
  const mo = twoDigits(s, 5);
  const d = twoDigits(s, 8);
  const h = twoDigits(s, 11);
  const mi = twoDigits(s, 14);
  const sec = twoDigits(s, 17);
  let ms = 0;
  if (n === 24) {
    if (s.charCodeAt(19) !== 46) return undefined;
    const a = twoDigits(s, 20);
    const c = s.charCodeAt(22) - 48;
    if (a < 0 || c < 0 || c > 9) return undefined;
    ms = a * 10 + c;
  }
  if (y1 < 10 || y2 < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 59) return undefined;
  const y = y1 * 100 + y2;
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  if (d > (mo === 2 && leap ? 29 : DAYS_IN_MONTH[mo - 1])) return undefined;
  return Date.UTC(y, mo - 1, d, h, mi, sec, ms);
}

// Own instance: strictNumbers rejects NaN/±Infinity (1e999 in JSON parses to Infinity).
const ajv = new Ajv({ allErrors: true, strict: false, strictNumbers: true, coerceTypes: false, useDefaults: false });
const batchCheck: ValidateFunction = ajv.compile(readingSchema(true));
const singleCheck: ValidateFunction = ajv.compile(readingSchema(false));

/** What the validator needs to know besides the reading. */
export interface ValidationContext {
  /** Node facts by id, from the in-memory registry. */
  node(nodeId: string): NodeInfo | undefined;
  acceptUnknownNodes: boolean;
  retentionDays: number;
}

/**
 * Validates readings with a schema compiled once and turns each valid one into an IngestRow.
 * `now` is both the arrival time recorded and the clock for future/retention checks.
 */
export class ReadingValidator {
  constructor(private readonly ctx: ValidationContext) {}

  /**
   * Validates one reading. `pathNodeId` is the node of the single-reading route (the body may
   * then omit nodeId, or repeat the same one). Returns the row, or the problems with their reason.
   */
  check(input: unknown, index: number, prefix: string, now: number, pathNodeId?: string): IngestRow | { rejection: Rejection; reason: RejectReason } {
    return this.fast(input, now, pathNodeId) ?? this.full(input, index, prefix, now, pathNodeId);
  }

  /** Like check() for reading `index` of a batch body (paths /readings/<index>/…). */
  checkBatchReading(input: unknown, index: number, now: number): IngestRow | { rejection: Rejection; reason: RejectReason } {
    return this.fast(input, now) ?? this.full(input, index, `/readings/${index}`, now);
  }

  /**
   * The common case without the schema validator or any allocation beyond the row: a reading
   * whose every field is present in its plainest valid form. Anything else, valid or not, returns
   * undefined and goes through full(), which decides and words every error; so this path only
   * ever accepts what full() accepts, with the same row.
   */
  private fast(input: unknown, now: number, pathNodeId?: string): IngestRow | undefined {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) return undefined;
    const r = input as Record<string, unknown>;
    let nodeId = pathNodeId;
    let timestamp: unknown;
    let health: string | null = null;
    let quality: string | null = null;
    let extraValue: unknown;
    const values: (number | null)[] = [null, null, null, null, null, null, null, null, null, null, null];
    for (const key in r) {
      const v = r[key];
      const f = FIELD_INDEX[key];
      if (f !== undefined) {
        if (typeof v !== 'number' || !Number.isFinite(v)) return undefined;
        if (v < FIELD_MIN[f] || v > FIELD_MAX[f]) return undefined;
        values[f] = v;
        continue;
      }
      switch (key) {
        case 'nodeId':
          if (typeof v !== 'string' || (pathNodeId !== undefined ? v !== pathNodeId : !NODE_ID_RE.test(v))) return undefined;
          nodeId = v;
          break;
        case 'timestamp':
          timestamp = v;
          break;
        case 'healthStatus':
          if (typeof v !== 'string' || !HEALTH_SET.has(v)) return undefined;
          health = v;
          break;
        case 'quality':
          if (typeof v !== 'string' || !QUALITY_SET.has(v)) return undefined;
          quality = v;
          break;
        case 'extra':
          if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
          extraValue = v;
          break;
        default:
          return undefined;
      }
    }
    if (nodeId === undefined || values[0] === null) return undefined;
    let ts: number | undefined;
    if (typeof timestamp === 'string') ts = timestamp.length > 0 && timestamp.length <= TIME_TEXT_MAX ? parseIsoFast(timestamp) ?? parseBodyTime(timestamp) : undefined;
    else if (typeof timestamp === 'number') ts = parseTime(timestamp);
    if (ts === undefined || ts > now + FUTURE_TOLERANCE_MS || ts < now - this.ctx.retentionDays * 86_400_000) return undefined;
    let extra: string | null = null;
    if (extraValue !== undefined) {
      if (nestedDeeperThan(extraValue)) return undefined;
      extra = JSON.stringify(extraValue);
      if (UNSTORABLE_JSON.test(extra) || (extra.length > EXTRA_MAX_BYTES / 4 && Buffer.byteLength(extra) > EXTRA_MAX_BYTES) || nonFinitePath(extraValue, '') !== null) return undefined;
    }
    const info = this.ctx.node(nodeId);
    if (!info && !this.ctx.acceptUnknownNodes) return undefined;
    const intervalS = info?.telemetryIntervalSeconds ?? DEFAULT_INTERVAL_SECONDS;
    return { nodeId, ts, receivedAt: now, values, healthStatus: health, quality, extra, flags: softFlags(info, values[0], ts, now, intervalS), intervalS };
  }

  private full(input: unknown, index: number, prefix: string, now: number, pathNodeId?: string): IngestRow | { rejection: Rejection; reason: RejectReason } {
    const single = pathNodeId !== undefined;
    const validate = single ? singleCheck : batchCheck;
    const bodyNodeId = isObject(input) && typeof input.nodeId === 'string' ? input.nodeId : undefined;
    const reportedNode = single ? pathNodeId : bodyNodeId !== undefined && NODE_ID_RE.test(bodyNodeId) ? bodyNodeId : null;
    const fail = (errors: ErrorDetail[], reason: RejectReason) => ({ rejection: { index, nodeId: reportedNode ?? null, errors }, reason });

    if (!validate(input)) return fail(toDetails(validate.errors as ErrorObject[], prefix), 'schema');
    const r = input as Record<string, unknown>;
    const nodeId = single ? pathNodeId : (r.nodeId as string);
    if (single && r.nodeId !== undefined && r.nodeId !== pathNodeId) {
      return fail([{ path: `${prefix}/nodeId`, message: `must match the node in the path (${pathNodeId})` }], 'node_mismatch');
    }

    const ts = parseBodyTime(r.timestamp);
    if (ts === undefined) return fail([{ path: `${prefix}/timestamp`, message: 'must be an RFC 3339 time with offset or epoch milliseconds' }], 'timestamp');
    if (ts > now + FUTURE_TOLERANCE_MS) return fail([{ path: `${prefix}/timestamp`, message: 'is more than 5 minutes in the future' }], 'future');
    if (ts < now - this.ctx.retentionDays * 86_400_000) {
      return fail([{ path: `${prefix}/timestamp`, message: `is older than the telemetry retention of ${this.ctx.retentionDays} days` }], 'retention');
    }

    let extra: string | null = null;
    if (r.extra !== undefined) {
      // Checked before anything recursive (JSON.stringify) walks it.
      if (nestedDeeperThan(r.extra)) {
        return fail([{ path: `${prefix}/extra`, message: `must not nest objects or arrays more than ${MAX_JSON_DEPTH} levels deep` }], 'schema');
      }
      extra = JSON.stringify(r.extra);
      // jsonb cannot hold NUL characters or unpaired surrogates; one such value would fail a whole write.
      if (UNSTORABLE_JSON.test(extra)) return fail([{ path: `${prefix}/extra`, message: 'must not contain NUL characters or unpaired UTF-16 surrogates' }], 'schema');
      // Characters never exceed bytes, so the byte count is only needed near the bound.
      if (extra.length > EXTRA_MAX_BYTES / 4 && Buffer.byteLength(extra) > EXTRA_MAX_BYTES) {
        return fail([{ path: `${prefix}/extra`, message: `must be at most ${EXTRA_MAX_BYTES} bytes as JSON` }], 'extra_size');
      }
      // A number literal beyond float8 (1e999) parses to Infinity, which JSON would store as null.
      const bad = nonFinitePath(r.extra, `${prefix}/extra`);
      if (bad !== null) return fail([{ path: bad, message: 'must be a finite number' }], 'schema');
    }

    const info = this.ctx.node(nodeId);
    if (!info && !this.ctx.acceptUnknownNodes) return fail([{ path: single ? '/nodeId' : `${prefix}/nodeId`, message: `unknown node ${nodeId}` }], 'unknown_node');
    const intervalS = info?.telemetryIntervalSeconds ?? DEFAULT_INTERVAL_SECONDS;

    const values: (number | null)[] = new Array(NUMERIC_FIELDS.length);
    for (let i = 0; i < NUMERIC_FIELDS.length; i++) {
      const v = r[NUMERIC_FIELDS[i][0]];
      values[i] = v === undefined ? null : (v as number);
    }
    const flags = softFlags(info, values[0] as number, ts, now, intervalS);

    return {
      nodeId,
      ts,
      receivedAt: now,
      values,
      healthStatus: (r.healthStatus as string | undefined) ?? null,
      quality: (r.quality as string | undefined) ?? null,
      extra,
      flags,
      intervalS,
    };
  }
}

/** Soft anomalies, stored and counted: power beyond 110 % of capacity, arrival later than 3 intervals. */
function softFlags(info: { capacityKw: number } | undefined, powerKw: number, ts: number, now: number, intervalS: number): number {
  let flags = 0;
  if (info && Math.abs(powerKw) > 1.1 * info.capacityKw) flags |= FLAG_OUT_OF_RANGE;
  if (now - ts > 3 * intervalS * 1000) flags |= FLAG_LATE;
  return flags;
}

/** JSON pointer of the first non-finite number inside `v` (below `path`), or null. */
function nonFinitePath(v: unknown, path: string): string | null {
  if (typeof v === 'number') return Number.isFinite(v) ? null : path;
  if (typeof v !== 'object' || v === null) return null;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const p = nonFinitePath(v[i], `${path}/${i}`);
      if (p !== null) return p;
    }
    return null;
  }
  for (const k in v) {
    const p = nonFinitePath((v as Record<string, unknown>)[k], `${path}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`);
    if (p !== null) return p;
  }
  return null;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** True when two rows for the same key carry the same reading (arrival time and flags aside). */
export function sameReading(a: IngestRow, b: IngestRow): boolean {
  if (a.healthStatus !== b.healthStatus || a.quality !== b.quality) return false;
  for (let i = 0; i < a.values.length; i++) if (a.values[i] !== b.values[i]) return false;
  if (a.extra === b.extra) return true;
  if (a.extra === null || b.extra === null) return false;
  // Same object with keys in another order is the same jsonb value.
  return canonical(JSON.parse(a.extra)) === canonical(JSON.parse(b.extra));
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}
