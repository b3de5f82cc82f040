/**
 * Independent reference computations for the analytics tests: straight from raw readings and
 * transaction records, with time zones handled through Intl only (no project code).
 */
import assert from 'node:assert/strict';

export interface RefReading {
  /** epoch ms */
  ts: number;
  powerKw: number;
  healthStatus?: string;
}

export interface RefFigures {
  exportedKwh: number;
  importedKwh: number;
  heldS: number;
  availableS: number;
  integral: number;
  count: number;
  min: number | null;
  max: number | null;
}

/** Hold rule by its definition: each reading holds until the next one, at most `capS` seconds. */
export function refFigures(readings: readonly RefReading[], start: number, end: number, capS: number): RefFigures {
  const rs = [...readings].sort((a, b) => a.ts - b.ts);
  const f: RefFigures = { exportedKwh: 0, importedKwh: 0, heldS: 0, availableS: 0, integral: 0, count: 0, min: null, max: null };
  for (let i = 0; i < rs.length; i++) {
    const r = rs[i];
    const holdEnd = Math.min(i + 1 < rs.length ? rs[i + 1].ts : Infinity, r.ts + capS * 1000);
    const a = Math.max(r.ts, start);
    const b = Math.min(holdEnd, end);
    if (b > a) {
      const s = (b - a) / 1000;
      f.heldS += s;
      f.integral += r.powerKw * s;
      if (r.powerKw > 0) f.exportedKwh += (r.powerKw * s) / 3600;
      else f.importedKwh += (-r.powerKw * s) / 3600;
      if (r.healthStatus !== 'fault' && r.healthStatus !== 'offline') f.availableS += s;
    }
    if (r.ts >= start && r.ts < end) {
      f.count++;
      f.min = f.min === null ? r.powerKw : Math.min(f.min, r.powerKw);
      f.max = f.max === null ? r.powerKw : Math.max(f.max, r.powerKw);
    }
  }
  return f;
}

const dayFormats = new Map<string, Intl.DateTimeFormat>();
/** Local calendar date `YYYY-MM-DD` of an instant in `tz`. */
export function localDateOf(ms: number, tz: string): string {
  let f = dayFormats.get(tz);
  if (!f) dayFormats.set(tz, (f = new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' })));
  return f.format(new Date(ms));
}

/** First instant (on the 15-minute grid) whose local date in `tz` is `date`. */
export function localMidnight(date: string, tz: string): number {
  const [y, m, d] = date.split('-').map(Number);
  for (let t = Date.UTC(y, m - 1, d) - 15 * 3_600_000; ; t += 900_000) {
    if (localDateOf(t, tz) === date) return t;
  }
}

/** Every local date from `first` to `last` inclusive, with its [start, end) instants. */
export function refDays(first: string, last: string, tz: string): { date: string; start: number; end: number }[] {
  const out: { date: string; start: number; end: number }[] = [];
  let cur = first;
  for (;;) {
    const [y, m, d] = cur.split('-').map(Number);
    const next = new Date(Date.UTC(y, m - 1, d + 1)).toISOString().slice(0, 10);
    out.push({ date: cur, start: localMidnight(cur, tz), end: localMidnight(next, tz) });
    if (cur === last) return out;
    cur = next;
  }
}

export interface RefTx {
  id: string;
  sequence: number;
  type: string;
  status: string;
  timestamp: string;
  amountEur: number | null;
  relatesTo: string | null;
}

/**
 * Money and dispatch counts per local date by the documented chain rules: a chain is a root
 * settlement (dispatch) and the records following it up; its latest record's status decides
 * whether it counts, its latest amount is the amount, and the root's time decides the day.
 */
export function refMoney(txs: readonly RefTx[], tz: string): Map<string, { revenue: number; cost: number; dispatches: number }> {
  const byId = new Map(txs.map((t) => [t.id, t]));
  const follows = (t: RefTx, rootType: string) => t.type === rootType || (rootType === 'settlement' && t.type === 'adjustment');
  const rootOf = (t: RefTx): RefTx | undefined => {
    let cur = t;
    const rootType = t.type === 'adjustment' ? 'settlement' : t.type;
    for (;;) {
      const parent = cur.relatesTo ? byId.get(cur.relatesTo) : undefined;
      if (!parent || !follows(parent, rootType)) return cur.type === rootType ? cur : undefined;
      cur = parent;
    }
  };
  const chains = new Map<string, RefTx[]>();
  for (const t of txs) {
    if (t.type !== 'settlement' && t.type !== 'dispatch' && t.type !== 'adjustment') continue;
    const root = rootOf(t);
    if (!root) continue;
    const list = chains.get(root.id) ?? [];
    list.push(t);
    chains.set(root.id, list);
  }
  const out = new Map<string, { revenue: number; cost: number; dispatches: number }>();
  for (const [rootId, members] of chains) {
    const root = byId.get(rootId) as RefTx;
    members.sort((a, b) => b.sequence - a.sequence);
    if (members[0].status === 'rejected' || members[0].status === 'failed') continue;
    const day = localDateOf(Date.parse(root.timestamp), tz);
    const e = out.get(day) ?? { revenue: 0, cost: 0, dispatches: 0 };
    if (root.type === 'dispatch') e.dispatches++;
    else {
      const amount = members.find((m) => m.amountEur !== null)?.amountEur ?? 0;
      if (amount > 0) e.revenue += amount;
      else e.cost -= amount;
    }
    out.set(day, e);
  }
  return out;
}

/** |a − b| within a relative 1e-9 (and 1e-9 absolute). */
export function close(actual: number | null, expected: number | null, what: string): void {
  if (expected === null || actual === null) {
    assert.equal(actual, expected, what);
    return;
  }
  assert.ok(Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)), `${what}: ${actual} ≠ ${expected}`);
}

export { rng } from './support/rng.js';
