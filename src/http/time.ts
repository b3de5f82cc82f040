import { badRequest } from './errors.js';

/** Longest time text accepted anywhere (RFC 3339 allows any number of fraction digits). */
export const TIME_TEXT_MAX = 64;

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * Parses an input time: an RFC 3339 string with an offset, or epoch milliseconds (number,
 * or digits in a query string). Returns epoch ms, or undefined when it is not a valid time.
 * Sub-millisecond digits are truncated.
 */
export function parseTime(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  if (/^\d{1,15}$/.test(value)) return Number(value);
  const m = RFC3339.exec(value);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s] = m.map(Number);
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return undefined;
  const ms = Date.parse(value.replace(/(\.\d{3})\d+/, '$1'));
  if (!Number.isFinite(ms)) return undefined;
  // Date.parse rolls 2026-02-31 over to March; reject days that do not exist.
  const local = new Date(Date.UTC(y, mo - 1, d));
  if (local.getUTCDate() !== d) return undefined;
  return ms;
}

/**
 * A time in a JSON body: an RFC 3339 string, or epoch milliseconds as a JSON number. Digits in a
 * string are a query string's form of epoch ms; in a body, where types are not coerced, they are
 * not a time ("1795773600000" would otherwise pass, and "002026" be 2.026 s after the epoch).
 */
export function parseBodyTime(value: unknown): number | undefined {
  return typeof value === 'string' && /^\d+$/.test(value) ? undefined : parseTime(value);
}

/** Like parseTime, but a 400 naming `path` when the value is missing or not a time. */
export function requireTime(value: unknown, path: string): number {
  const t = parseTime(value);
  if (t === undefined) throw badRequest(`${path.replace(/^\//, '')} must be an RFC 3339 time with offset or epoch milliseconds`, [{ path, message: 'invalid time' }], 'INVALID_TIME');
  return t;
}

/** RFC 3339 in UTC with milliseconds, e.g. 2026-11-27T10:15:00.000Z. */
export function isoUtc(ms: number | Date): string {
  return new Date(ms).toISOString();
}
