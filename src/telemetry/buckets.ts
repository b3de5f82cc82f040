/**
 * Bucket and calendar-period boundaries: the one place where time buckets are computed.
 *
 * Every function works on epoch milliseconds and returns half-open periods `[start, end)`.
 * Local calendar units (day, week, month) follow an IANA time zone and are DST-correct: a local
 * day is the time from one local midnight to the next, so it lasts 23 or 25 hours on clock-change
 * days (24 h ± 30 min on Lord Howe Island). Weeks start on Monday.
 */

/** A half-open period `[start, end)` in epoch milliseconds, with a label for calendar periods. */
export interface Period {
  /** Inclusive start (epoch ms). */
  start: number;
  /** Exclusive end (epoch ms), > start. */
  end: number;
  /** Local calendar label: `YYYY-MM-DD` for days and weeks (the Monday), `YYYY-MM` for months; absent for fixed intervals. */
  label?: string;
}

/** Calendar units that follow a time zone's local calendar. */
export type CalendarUnit = 'day' | 'week' | 'month';

export const MINUTE_MS = 60_000;
export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;
/** The finest rollup bucket: every real UTC offset is a multiple of it. */
export const QUARTER_MS = 900_000;

interface Segment {
  /** Inclusive start (epoch ms). */
  start: number;
  /** Exclusive end (epoch ms). */
  end: number;
  /** UTC offset in ms during the segment (local = utc + offset). */
  offset: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();
const validZones = new Map<string, boolean>();

/** True when `tz` names a time zone this runtime knows (IANA name or UTC). */
export function isValidTimeZone(tz: string): boolean {
  let ok = validZones.get(tz);
  if (ok === undefined) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: tz });
      ok = tz.length > 0 && tz.length <= 64;
    } catch {
      ok = false;
    }
    validZones.set(tz, ok);
  }
  return ok;
}

function formatter(tz: string): Intl.DateTimeFormat {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(tz, f);
  }
  return f;
}

/** The UTC offset (ms) of `tz` at instant `ms`, asked of the runtime's time-zone database (slow path). */
function offsetFromIntl(tz: string, ms: number): number {
  const parts = formatter(tz).formatToParts(new Date(ms));
  const get = (type: string) => Number(parts.find((p) => p.type === type)?.value);
  const wall = Date.UTC(get('year'), get('month') - 1, get('day'), get('hour'), get('minute'), get('second'));
  const whole = ms - (((ms % 1000) + 1000) % 1000);
  return wall - whole;
}

// Offsets only change at transitions, a few per year: the segments of each UTC year are found
// once per zone (daily samples, then bisection to the second) and kept.
const yearSegments = new Map<string, Segment[]>();
// No zone changes its offset twice within a day, so daily samples find every transition.
const SAMPLE_MS = DAY_MS;

function segmentsOfYear(tz: string, year: number): Segment[] {
  const key = `${tz}|${year}`;
  const cached = yearSegments.get(key);
  if (cached) return cached;
  const start = Date.UTC(year, 0, 1);
  const end = Date.UTC(year + 1, 0, 1);
  const segs: Segment[] = [];
  let segStart = start;
  let prevT = start;
  let prevOff = offsetFromIntl(tz, start);
  // Samples run to the year's last second, so a change during its last UTC day is found
  // (Pacific/Kiritimati's 1994-12-31T10:00Z, or one at local New Year east of UTC); a change at
  // the year boundary itself starts the next year.
  const last = end - 1000;
  for (let t = Math.min(start + SAMPLE_MS, last); ; t = Math.min(t + SAMPLE_MS, last)) {
    const off = offsetFromIntl(tz, t);
    if (off !== prevOff) {
      // Bisect (prevT, t] to the first second with the new offset.
      let lo = prevT;
      let hi = t;
      while (hi - lo > 1000) {
        const mid = lo + Math.floor((hi - lo) / 2000) * 1000;
        if (offsetFromIntl(tz, mid) === prevOff) lo = mid;
        else hi = mid;
      }
      segs.push({ start: segStart, end: hi, offset: prevOff });
      segStart = hi;
      prevOff = off;
    }
    prevT = t;
    if (t >= last) break;
  }
  segs.push({ start: segStart, end, offset: prevOff });
  yearSegments.set(key, segs);
  return segs;
}

/** Offset segments of `tz` covering `[from, to)`, in order. */
function segmentsBetween(tz: string, from: number, to: number): Segment[] {
  const y0 = new Date(from).getUTCFullYear();
  const y1 = new Date(Math.max(from, to - 1)).getUTCFullYear();
  const out: Segment[] = [];
  for (let y = y0; y <= y1; y++) {
    for (const s of segmentsOfYear(tz, y)) {
      if (s.end <= from || s.start >= to) continue;
      const last = out[out.length - 1];
      // Year ends are not transitions: join them.
      if (last && last.offset === s.offset && last.end === s.start) last.end = s.end;
      else out.push({ ...s });
    }
  }
  return out;
}

/** UTC offset of `tz` at `ms`, in milliseconds (local wall time = ms + offset). */
export function offsetAt(tz: string, ms: number): number {
  const y = new Date(ms).getUTCFullYear();
  const segs = segmentsOfYear(tz, y);
  let lo = 0;
  let hi = segs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (segs[mid].start <= ms) lo = mid;
    else hi = mid - 1;
  }
  return segs[lo].offset;
}

/** Civil date of `ms` in `tz`: year, month 1–12, day 1–31. */
export function localDate(tz: string, ms: number): { y: number; m: number; d: number } {
  const w = new Date(ms + offsetAt(tz, ms));
  return { y: w.getUTCFullYear(), m: w.getUTCMonth() + 1, d: w.getUTCDate() };
}

/**
 * The first instant of local civil day `y-m-d` in `tz` (epoch ms): local midnight, or the end of
 * the clock change when midnight itself is skipped. `m` is 1–12; out-of-range days roll over
 * like `Date.UTC` (so `d = 32` is the next month's first day).
 */
export function localDayStart(tz: string, y: number, m: number, d: number): number {
  const wall = Date.UTC(y, m - 1, d);
  // Offsets lie within ±18 h, so the answer is in [wall - 18 h, wall + 18 h].
  for (const s of segmentsBetween(tz, wall - 18 * HOUR_MS, wall + 18 * HOUR_MS + 1)) {
    const t = Math.max(s.start, wall - s.offset);
    if (t < s.end) return t;
  }
  return wall; // unreachable: the last segment always contains a candidate
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

/** `YYYY-MM-DD` of a civil date. */
export function dateLabel(y: number, m: number, d: number): string {
  const t = new Date(Date.UTC(y, m - 1, d));
  return `${pad(t.getUTCFullYear(), 4)}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())}`;
}

/** Parses `YYYY-MM-DD` (a real calendar date) or returns undefined. */
export function parseDateLabel(s: string): { y: number; m: number; d: number } | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
  if (!m) return undefined;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const t = new Date(Date.UTC(y, mo - 1, d));
  if (t.getUTCFullYear() !== y || t.getUTCMonth() !== mo - 1 || t.getUTCDate() !== d) return undefined;
  return { y, m: mo, d };
}

/** Parses `YYYY-MM` or returns undefined. */
export function parseMonthLabel(s: string): { y: number; m: number } | undefined {
  const m = /^(\d{4})-(\d{2})$/.exec(s);
  if (!m) return undefined;
  const [y, mo] = [Number(m[1]), Number(m[2])];
  return mo >= 1 && mo <= 12 ? { y, m: mo } : undefined;
}

/** ISO weekday of a civil date: 0 = Monday … 6 = Sunday. */
function mondayIndex(y: number, m: number, d: number): number {
  return (new Date(Date.UTC(y, m - 1, d)).getUTCDay() + 6) % 7;
}

/** The civil date that starts the `unit` containing civil date `y-m-d`. */
function unitStartDate(unit: CalendarUnit, y: number, m: number, d: number): { y: number; m: number; d: number } {
  if (unit === 'day') return { y, m, d };
  if (unit === 'month') return { y, m, d: 1 };
  const t = new Date(Date.UTC(y, m - 1, d - mondayIndex(y, m, d)));
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

function nextUnitDate(unit: CalendarUnit, c: { y: number; m: number; d: number }): { y: number; m: number; d: number } {
  const t = unit === 'day' ? new Date(Date.UTC(c.y, c.m - 1, c.d + 1)) : unit === 'week' ? new Date(Date.UTC(c.y, c.m - 1, c.d + 7)) : new Date(Date.UTC(c.y, c.m, 1));
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

function labelOf(unit: CalendarUnit, c: { y: number; m: number; d: number }): string {
  return unit === 'month' ? `${pad(c.y, 4)}-${pad(c.m)}` : dateLabel(c.y, c.m, c.d);
}

/**
 * Local calendar periods of `tz` overlapping `[from, to)`: the first one contains `from` (so it
 * may start before it), the last one contains `to - 1`. Days are 23/24/25 h long around DST
 * changes; weeks start Monday 00:00 local; months start on the 1st at 00:00 local. A day that
 * never happened in `tz` (skipped whole when a zone crossed the date line) has no period.
 */
export function calendarPeriods(tz: string, unit: CalendarUnit, from: number, to: number): Period[] {
  if (!(to > from)) return [];
  const first = localDate(tz, from);
  let c = unitStartDate(unit, first.y, first.m, first.d);
  let start = localDayStart(tz, c.y, c.m, c.d);
  const out: Period[] = [];
  while (start < to) {
    const n = nextUnitDate(unit, c);
    const end = localDayStart(tz, n.y, n.m, n.d);
    // A local day that a zone skipped whole (Pacific/Apia's 2011-12-30) has no time: no period.
    if (end > start) out.push({ start, end, label: labelOf(unit, c) });
    c = n;
    start = end;
  }
  return out;
}

/**
 * Local calendar days from civil date `first` to civil date `last`, both included
 * (`YYYY-MM-DD`), in `tz`. Days that never happened in `tz` are left out, so the result is empty
 * when every date asked for was skipped. Throws RangeError on a malformed date or `last` before
 * `first`.
 */
export function localDays(tz: string, first: string, last: string): Period[] {
  const { from, to } = localDateSpan(tz, first, last);
  return calendarPeriods(tz, 'day', from, to);
}

/** Epoch-ms span [start of `first`, end of `last`) of two civil dates (`YYYY-MM-DD`, both included) in `tz`. */
function localDateSpan(tz: string, first: string, last: string): { from: number; to: number } {
  const a = parseDateLabel(first);
  const b = parseDateLabel(last);
  if (!a || !b) throw new RangeError('dates must be YYYY-MM-DD');
  if (Date.UTC(b.y, b.m - 1, b.d) < Date.UTC(a.y, a.m - 1, a.d)) throw new RangeError('last date is before first date');
  // Equal when every date asked for was skipped in `tz`.
  return { from: localDayStart(tz, a.y, a.m, a.d), to: localDayStart(tz, b.y, b.m, b.d + 1) };
}

/**
 * Local calendar months from `first` to `last`, both included (`YYYY-MM`), in `tz`.
 * Throws RangeError on a malformed month or `last` before `first`.
 */
export function localMonths(tz: string, first: string, last: string): Period[] {
  const a = parseMonthLabel(first);
  const b = parseMonthLabel(last);
  if (!a || !b) throw new RangeError('months must be YYYY-MM');
  const from = localDayStart(tz, a.y, a.m, 1);
  const to = localDayStart(tz, b.y, b.m + 1, 1);
  if (!(to > from)) throw new RangeError('last month is before first month');
  return calendarPeriods(tz, 'month', from, to);
}

/**
 * Local ISO weeks (Monday to Monday) containing civil dates `first` … `last` (`YYYY-MM-DD`,
 * both included) in `tz`; each is labelled with its Monday.
 */
export function localWeeks(tz: string, first: string, last: string): Period[] {
  const { from, to } = localDateSpan(tz, first, last);
  return calendarPeriods(tz, 'week', from, to);
}

/**
 * Fixed-length buckets of `stepMs` (a divisor of one day, at least one minute) overlapping
 * `[from, to)`, aligned to the local wall clock of `tz`: a bucket starts wherever the local time
 * of day is a multiple of `stepMs`. Steps of 15 minutes or less are therefore the UTC epoch grid
 * (every offset is a multiple of 15 min); 30-minute and hourly buckets shift with the offset
 * (e.g. hourly buckets start at :30 UTC in Asia/Kolkata). Where a clock change is not a whole
 * number of steps (Lord Howe's 30-minute change under hourly buckets), the bucket across it runs
 * from the last grid point before to the first one after.
 */
export function fixedPeriods(tz: string, stepMs: number, from: number, to: number): Period[] {
  if (!(to > from)) return [];
  // Boundaries are the local grid points of every offset segment; a window wider than a step
  // plus the largest clock change finds the boundary at or before `from` and after `to`.
  const lo = from - stepMs - 2 * HOUR_MS;
  const hi = to + stepMs + 2 * HOUR_MS;
  const points: number[] = [];
  for (const s of segmentsBetween(tz, lo, hi)) {
    const shift = (((-s.offset) % stepMs) + stepMs) % stepMs;
    const a = Math.max(s.start, lo);
    let t = Math.ceil((a - shift) / stepMs) * stepMs + shift;
    for (; t < s.end && t < hi; t += stepMs) points.push(t);
  }
  const out: Period[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const start = points[i];
    const end = points[i + 1];
    if (end > from && start < to) out.push({ start, end });
  }
  return out;
}

/** Historical-query intervals with fixed length, in ms. */
export const FIXED_INTERVALS: Readonly<Record<string, number>> = {
  '1m': MINUTE_MS,
  '5m': 5 * MINUTE_MS,
  '15m': QUARTER_MS,
  '30m': 30 * MINUTE_MS,
  '1h': HOUR_MS,
};

/** Calendar intervals of historical queries. */
export const CALENDAR_INTERVALS: Readonly<Record<string, CalendarUnit>> = { '1d': 'day', '1w': 'week', '1mo': 'month' };

/**
 * Output buckets of a historical query: for `interval` (1m … 1mo) in `tz`, the buckets
 * overlapping `[from, to)`, aligned to the local clock/calendar (the first may start before `from`).
 */
export function intervalPeriods(interval: string, tz: string, from: number, to: number): Period[] {
  const fixed = FIXED_INTERVALS[interval];
  if (fixed !== undefined) return fixedPeriods(tz, fixed, from, to);
  const unit = CALENDAR_INTERVALS[interval];
  if (unit !== undefined) return calendarPeriods(tz, unit, from, to);
  throw new RangeError(`unknown interval ${interval}`);
}

/**
 * RFC 3339 with milliseconds and the local offset of `tz` (e.g. `2026-03-08T03:00:00.000-04:00`).
 * RFC 3339 offsets are whole minutes: an offset with seconds (local mean time before standard
 * time, e.g. Africa/Monrovia's -00:44:30 until 1972) is written rounded to the minute, with the
 * wall time to match, so the text still names exactly the instant `ms`.
 */
export function formatInZone(ms: number, tz: string): string {
  const off = Math.round(offsetAt(tz, ms) / MINUTE_MS) * MINUTE_MS;
  const w = new Date(ms + off);
  const sign = off < 0 ? '-' : '+';
  const abs = Math.abs(off) / MINUTE_MS;
  // slice(0, -1) drops the Z, also from the expanded form of years past 9999 (+010000-01-01T…).
  return `${w.toISOString().slice(0, -1)}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}
