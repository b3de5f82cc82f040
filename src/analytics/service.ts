/**
 * Analytics rules: per-node daily and monthly figures in local calendar periods, peer-group
 * benchmarks and portfolio totals, answered through the analytics cache.
 * Energy semantics come from src/telemetry/energy.ts (and its set-based twin energy-many.ts);
 * money and dispatch counts from settlement and dispatch chains (store.ts).
 */
import type { Db } from '../db/pool.js';
import { timezoneCatalog } from '../db/timezones.js';
import { badRequest, notFound, type ErrorDetail } from '../http/errors.js';
import { isoUtc, parseTime } from '../http/time.js';
import type { Metrics } from '../metrics/metrics.js';
import type { NodeRegistry } from '../metadata/registry.js';
import { localDate, localDayStart, parseDateLabel, parseMonthLabel, type Period } from '../telemetry/buckets.js';
import { energyByPeriods, formatInZone, isValidTimeZone, localDays } from '../telemetry/energy.js';
import { roundSig } from '../telemetry/query-engine.js';
import { FLEET, type AnalyticsCache } from './cache.js';
import { energyForNodes, type EnergyFigures } from './energy-many.js';
import { fleetFingerprint, listLiveNodes, loadChains, nodeFingerprint, sumChainsByNode, VOID_STATUSES, type AnalyticsNode, type NodeMoney } from './store.js';

/** Most local days one daily request may span. */
export const MAX_DAYS = 366;
/** Most local months one monthly request may span. */
export const MAX_MONTHS = 24;
/** Earliest and latest calendar dates (and portfolio instants) analytics accepts. */
export const FIRST_DATE = { y: 1970, m: 1, d: 1 };
export const LAST_DATE = { y: 9999, m: 12, d: 30 };
const FIRST_MS = Date.UTC(FIRST_DATE.y, FIRST_DATE.m - 1, FIRST_DATE.d);
const LAST_MS = Date.UTC(LAST_DATE.y, LAST_DATE.m - 1, LAST_DATE.d);
const civil = (c: { y: number; m: number; d: number }) => Date.UTC(c.y, c.m - 1, c.d);

function checkBounds(a: { y: number; m: number; d: number }, b: { y: number; m: number; d: number }): void {
  const details: ErrorDetail[] = [];
  if (civil(a) < FIRST_MS || civil(a) > LAST_MS) details.push({ path: '/from', message: 'must be between 1970-01-01 and 9999-12-30' });
  if (civil(b) < FIRST_MS || civil(b) > LAST_MS) details.push({ path: '/to', message: 'must be between 1970-01-01 and 9999-12-30' });
  if (details.length) throw badRequest('dates must lie between 1970-01-01 and 9999-12-30', details, 'INVALID_DATE');
}

/** Longest portfolio period (ms). */
export const MAX_PORTFOLIO_MS = 366 * 86_400_000;

/** One row of daily or monthly analytics (see docs/analytics.md for every definition). */
export interface AnalyticsRow {
  /** Local date `YYYY-MM-DD` (daily) or month `YYYY-MM` (monthly). */
  date: string;
  /** Period start and end (exclusive) in the request's time zone, RFC 3339. */
  start: string;
  end: string;
  /** Real length of the local period in hours (23, 24 or 25 for DST days). */
  hours: number;
  /** kWh ≥ 0 */
  energyExportedKwh: number;
  /** kWh ≥ 0 (imported energy reported positive) */
  energyImportedKwh: number;
  /** Time-weighted average over held time, kW; null when nothing was held. */
  avgPowerKw: number | null;
  /** Largest / smallest reading in the period, kW; null without readings. */
  peakPowerKw: number | null;
  minPowerKw: number | null;
  /** exported kWh / (capacityKw × hours), 0 … (1 for a node within its nameplate). */
  capacityFactor: number;
  /** 100 × available seconds / period seconds, 0–100. */
  availabilityPct: number;
  /** min(100, 100 × readings / expected readings), 0–100 (monthly: time-weighted mean of its days). */
  completenessPct: number;
  /** Readings timestamped in the period. */
  readingCount: number;
  /** period seconds / telemetryIntervalSeconds */
  expectedReadings: number;
  dispatchCount: number;
  /** EUR ≥ 0 */
  revenueEur: number;
  /** EUR ≥ 0 */
  costEur: number;
}

export type DailyAnswer = { nodeId: string; tz: string; from: string; to: string; capacityKw: number; telemetryIntervalSeconds: number; days: AnalyticsRow[] };
export type MonthlyAnswer = { nodeId: string; tz: string; from: string; to: string; capacityKw: number; telemetryIntervalSeconds: number; months: AnalyticsRow[] };

/** A metric of the node beside its peer group's quartiles. */
export interface BenchmarkFigure {
  /** The node's own value. */
  value: number;
  p25: number;
  median: number;
  p75: number;
  /** 100 × (peers below + ½ × peers equal) / peers, 0–100 (the node itself is one of the peers). */
  percentileRank: number;
}

export interface BenchmarksAnswer {
  nodeId: string;
  type: string;
  from: string;
  to: string;
  peerCount: number;
  capacityFactor: BenchmarkFigure;
  availabilityPct: BenchmarkFigure;
  revenuePerKw: BenchmarkFigure;
  completenessPct: BenchmarkFigure;
}

/** Portfolio figures of a set of nodes over `[from, to)`. */
export interface PortfolioFigures {
  nodes: number;
  /** Σ capacityKw */
  capacityKw: number;
  energyExportedKwh: number;
  energyImportedKwh: number;
  revenueEur: number;
  costEur: number;
  dispatchCount: number;
  /** Mean of the nodes' capacity factors (each node counts once); 0 without nodes. */
  avgCapacityFactor: number;
  /** Σ exported / (Σ capacityKw × hours): the fleet's capacity factor (capacity-weighted). */
  fleetCapacityFactor: number;
  /** Mean of the nodes' availabilityPct. */
  avgAvailabilityPct: number;
  /** Mean of the nodes' completenessPct. */
  avgCompletenessPct: number;
}

export interface PortfolioAnswer {
  from: string;
  to: string;
  hours: number;
  totals: PortfolioFigures;
  byType: (PortfolioFigures & { type: string })[];
}

export interface AnalyticsServiceDeps {
  db: Db;
  nodes: NodeRegistry;
  cache: AnalyticsCache;
  metrics: Metrics;
  /** The present (epoch ms); tests may pin it. */
  now?: () => number;
}

/** Figures of one period before ratios: sums that combine across periods. */
interface PeriodSums {
  label: string;
  start: number;
  end: number;
  exported: number;
  imported: number;
  held: number;
  integral: number;
  available: number;
  count: number;
  min: number | null;
  max: number | null;
  /** Σ completeness ratio (0–1, capped per day) × seconds: monthly completeness is the time-weighted mean of days. */
  completenessSeconds: number;
  dispatchCount: number;
  revenue: number;
  cost: number;
}

interface NodeFacts {
  nodeId: string;
  type: string;
  capacityKw: number;
  timezone: string;
  telemetryIntervalSeconds: number;
}

const H_MS = 3_600_000;
const utcDayStart = (ms: number) => Math.floor(ms / 86_400_000) * 86_400_000;
const r12 = (v: number) => roundSig(v);

function lowerBound(xs: readonly { start: number }[], t: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid].start <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/** Counted amount and dispatch flag of a chain: void statuses count nothing. */
function counts(status: string): boolean {
  return !VOID_STATUSES.includes(status);
}

function completenessRatio(count: number, seconds: number, intervalSeconds: number): number {
  const expected = seconds / intervalSeconds;
  return expected > 0 ? Math.min(1, count / expected) : 1;
}

/** Linear interpolation between closest ranks (R type 7, numpy's default) of sorted `xs`, p in 0–1. */
export function quantile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const h = (sorted.length - 1) * p;
  const lo = Math.floor(h);
  const hi = Math.ceil(h);
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
}

/** 100 × (values below + ½ × values equal) / n. */
export function percentileRank(values: readonly number[], v: number): number {
  let below = 0;
  let equal = 0;
  for (const x of values) {
    if (x < v) below++;
    else if (x === v) equal++;
  }
  return (100 * (below + 0.5 * equal)) / values.length;
}

export class AnalyticsService {
  private readonly now: () => number;

  constructor(private readonly deps: AnalyticsServiceDeps) {
    this.now = deps.now ?? Date.now;
  }

  // ---------------------------------------------------------------- per node

  async daily(input: { nodeId: string; from: string; to: string; tz?: string }): Promise<DailyAnswer> {
    const node = await this.node(input.nodeId);
    const tz = await this.zone(input.tz, node);
    this.dateRange(input.from, input.to);
    const periods = localDays(tz, input.from, input.to);
    // Every date asked for was skipped in this zone (e.g. Pacific/Apia's 2011-12-30): no days.
    if (periods.length === 0) return { nodeId: node.nodeId, tz, from: input.from, to: input.to, capacityKw: node.capacityKw, telemetryIntervalSeconds: node.telemetryIntervalSeconds, days: [] };
    const answer = await this.cached('daily', node, tz, periods, async () => {
      const sums = await this.periodSums(node, periods);
      return sums.map((s) => this.row(s, node, tz));
    });
    return { nodeId: node.nodeId, tz, from: input.from, to: input.to, capacityKw: node.capacityKw, telemetryIntervalSeconds: node.telemetryIntervalSeconds, days: answer };
  }

  async monthly(input: { nodeId: string; from: string; to: string; tz?: string }): Promise<MonthlyAnswer> {
    const node = await this.node(input.nodeId);
    const tz = await this.zone(input.tz, node);
    const a = parseMonthLabel(input.from);
    const b = parseMonthLabel(input.to);
    const problems: ErrorDetail[] = [];
    if (!a) problems.push({ path: '/from', message: 'must be a month YYYY-MM' });
    if (!b) problems.push({ path: '/to', message: 'must be a month YYYY-MM' });
    if (problems.length) throw badRequest('from and to must be months YYYY-MM', problems, 'INVALID_DATE');
    checkBounds({ ...a!, d: 1 }, { ...b!, d: new Date(Date.UTC(b!.y, b!.m, 0)).getUTCDate() });
    const months = (b!.y - a!.y) * 12 + (b!.m - a!.m) + 1;
    if (months < 1) throw badRequest('to must not be before from (both months are included)', [{ path: '/to', message: 'before from' }], 'INVALID_RANGE');
    if (months > MAX_MONTHS) throw badRequest(`at most ${MAX_MONTHS} months per request (asked ${months})`, [{ path: '/to', message: `range longer than ${MAX_MONTHS} months` }], 'RANGE_TOO_LONG');
    const lastDay = new Date(Date.UTC(b!.y, b!.m, 0)).getUTCDate();
    const days = localDays(tz, `${input.from}-01`, `${input.to}-${String(lastDay).padStart(2, '0')}`);
    const answer = await this.cached('monthly', node, tz, days, async () => {
      const sums = await this.periodSums(node, days);
      // A month is the combination of its local days.
      const byMonth: PeriodSums[] = [];
      for (const d of sums) {
        const label = d.label.slice(0, 7);
        const m = byMonth[byMonth.length - 1];
        if (m && m.label === label) combine(m, d);
        else byMonth.push({ ...d, label });
      }
      return byMonth.map((s) => this.row(s, node, tz));
    });
    return { nodeId: node.nodeId, tz, from: input.from, to: input.to, capacityKw: node.capacityKw, telemetryIntervalSeconds: node.telemetryIntervalSeconds, months: answer };
  }

  private async cached(kind: string, node: NodeFacts, tz: string, periods: Period[], compute: () => Promise<AnalyticsRow[]>): Promise<AnalyticsRow[]> {
    const lo = periods[0].start;
    const hi = periods[periods.length - 1].end;
    const q = this.deps.db.readPool;
    const fingerprint = await this.fingerprint(node.nodeId, lo, hi, () => nodeFingerprint(q, node.nodeId, lo, hi));
    const key = this.deps.cache.key(kind, { node, tz, lo, hi }, fingerprint);
    const today = localDate(tz, this.now());
    const { value } = await this.deps.cache.getOrCompute(key, hi, localDayStart(tz, today.y, today.m, today.d), compute);
    return value;
  }

  /** Per local period: energy figures, chains attributed by their root time. */
  private async periodSums(node: NodeFacts, periods: Period[]): Promise<PeriodSums[]> {
    const q = this.deps.db.readPool;
    const lo = periods[0].start;
    const hi = periods[periods.length - 1].end;
    const [energy, chains] = await Promise.all([
      this.deps.metrics.timeStore('analytics', 'energy', () => energyByPeriods(q, node, periods)),
      this.deps.metrics.timeStore('analytics', 'chains', () => loadChains(q, [{ nodeId: node.nodeId, lo, hi }])),
    ]);
    const sums = energy.periods.map((e, i): PeriodSums => {
      const seconds = (e.end - e.start) / 1000;
      return {
        label: periods[i].label as string,
        start: e.start,
        end: e.end,
        exported: e.energyExportedKwh,
        imported: e.energyImportedKwh,
        held: e.heldSeconds,
        integral: e.avgPowerKw === null ? 0 : e.avgPowerKw * e.heldSeconds,
        available: e.availableSeconds,
        count: e.readingCount,
        min: e.minPowerKw,
        max: e.maxPowerKw,
        completenessSeconds: completenessRatio(e.readingCount, seconds, node.telemetryIntervalSeconds) * seconds,
        dispatchCount: 0,
        revenue: 0,
        cost: 0,
      };
    });
    for (const c of chains) {
      const i = lowerBound(periods, c.rootTs);
      if (i < 0 || c.rootTs >= periods[i].end || !counts(c.status)) continue;
      if (c.kind === 'dispatch') sums[i].dispatchCount++;
      else if (c.amountEur !== null && c.amountEur > 0) sums[i].revenue += c.amountEur;
      else if (c.amountEur !== null && c.amountEur < 0) sums[i].cost -= c.amountEur;
    }
    return sums;
  }

  private row(s: PeriodSums, node: NodeFacts, tz: string): AnalyticsRow {
    const seconds = (s.end - s.start) / 1000;
    const hours = seconds / 3600;
    return {
      date: s.label,
      start: formatInZone(s.start, tz),
      end: formatInZone(s.end, tz),
      hours: r12(hours),
      energyExportedKwh: r12(s.exported),
      energyImportedKwh: r12(s.imported),
      avgPowerKw: s.held > 0 ? r12(s.integral / s.held) : null,
      peakPowerKw: s.max,
      minPowerKw: s.min,
      capacityFactor: r12(s.exported / (node.capacityKw * hours)),
      availabilityPct: r12((100 * s.available) / seconds),
      completenessPct: r12((100 * s.completenessSeconds) / seconds),
      readingCount: s.count,
      expectedReadings: r12(seconds / node.telemetryIntervalSeconds),
      dispatchCount: s.dispatchCount,
      revenueEur: r12(s.revenue),
      costEur: r12(s.cost),
    };
  }

  // ---------------------------------------------------------------- benchmarks

  async benchmarks(input: { nodeId: string; from: string; to: string; tz?: string }): Promise<BenchmarksAnswer> {
    const node = await this.node(input.nodeId);
    // With `tz`, every peer is measured over the same dates in that zone; else each in its own.
    const tz = input.tz === undefined ? undefined : await this.zone(input.tz, node);
    const [a, b] = this.dateRange(input.from, input.to);
    const ownZone = tz ?? node.timezone;
    if (!(localDayStart(ownZone, b.y, b.m, b.d + 1) > localDayStart(ownZone, a.y, a.m, a.d))) {
      throw badRequest(`no date from ${input.from} to ${input.to} occurred in time zone ${ownZone}`, [{ path: '/from', message: 'every date asked for was skipped in this time zone' }], 'INVALID_DATE');
    }
    const q = this.deps.db.readPool;
    // Peer windows are each peer's own local days, so the fleet-wide fingerprint spans ±14 h around them.
    const lo = Date.UTC(a.y, a.m - 1, a.d) - 14 * H_MS;
    const hi = Date.UTC(b.y, b.m - 1, b.d + 1) + 14 * H_MS;
    const fingerprint = await this.fingerprint(FLEET, lo, hi, () => fleetFingerprint(q, lo, hi));
    const key = this.deps.cache.key('benchmarks', { node, from: input.from, to: input.to, tz: tz ?? null }, fingerprint);
    // Today begins no earlier than 00:00 at UTC+14 (the earliest zone).
    const todayStart = utcDayStart(this.now()) - 14 * H_MS;
    const { value } = await this.deps.cache.getOrCompute(key, hi, todayStart, async () => {
      const peers = await this.deps.metrics.timeStore('analytics', 'peers', () => listLiveNodes(q, node.type));
      if (!peers.some((p) => p.nodeId === node.nodeId)) peers.push({ ...node, status: 'decommissioned' });
      // A peer whose zone skipped every date asked for has no window and is left out.
      const windows = peers
        .map((p) => {
          const start = localDayStart(tz ?? p.timezone, a.y, a.m, a.d);
          const end = localDayStart(tz ?? p.timezone, b.y, b.m, b.d + 1);
          return { node: p, start, end };
        })
        .filter((w) => w.end > w.start || w.node.nodeId === node.nodeId);

      const [energy, money] = await Promise.all([
        this.deps.metrics.timeStore('analytics', 'energy_many', () =>
          energyForNodes(q, windows.map((w) => ({ nodeId: w.node.nodeId, telemetryIntervalSeconds: w.node.telemetryIntervalSeconds, periods: [{ start: w.start, end: w.end }] }))),
        ),
        this.deps.metrics.timeStore('analytics', 'chains', () => sumChainsByNode(q, windows.map((w) => ({ nodeId: w.node.nodeId, lo: w.start, hi: w.end })))),
      ]);
      const metrics = windows.map((w, i) => nodeMetrics(w.node, energy[i][0], money.get(w.node.nodeId), w.end - w.start));
      const self = metrics[windows.findIndex((w) => w.node.nodeId === node.nodeId)];
      const figure = (pick: (m: NodeMetrics) => number): BenchmarkFigure => {
        const values = metrics.map(pick).sort((x, y) => x - y);
        const v = pick(self);
        return { value: r12(v), p25: r12(quantile(values, 0.25)), median: r12(quantile(values, 0.5)), p75: r12(quantile(values, 0.75)), percentileRank: r12(percentileRank(values, v)) };
      };
      return {
        nodeId: node.nodeId,
        type: node.type,
        from: input.from,
        to: input.to,
        peerCount: metrics.length,
        capacityFactor: figure((m) => m.capacityFactor),
        availabilityPct: figure((m) => m.availabilityPct),
        revenuePerKw: figure((m) => m.revenuePerKw),
        completenessPct: figure((m) => m.completenessPct),
      };
    });
    return value;
  }

  // ---------------------------------------------------------------- portfolio

  async portfolio(input: { from: string; to: string }): Promise<PortfolioAnswer> {
    const from = portfolioTime(input.from);
    const to = portfolioTime(input.to);
    if (from === undefined || to === undefined) {
      const details: ErrorDetail[] = [];
      if (from === undefined) details.push({ path: '/from', message: 'must be an RFC 3339 time, epoch milliseconds or a date YYYY-MM-DD (00:00 UTC)' });
      if (to === undefined) details.push({ path: '/to', message: 'must be an RFC 3339 time, epoch milliseconds or a date YYYY-MM-DD (00:00 UTC)' });
      throw badRequest('from and to must be times', details, 'INVALID_TIME');
    }
    if (from < FIRST_MS || to > LAST_MS) throw badRequest('the period must lie between 1970-01-01 and 9999-12-30', [{ path: from < FIRST_MS ? '/from' : '/to', message: 'out of range' }], 'INVALID_TIME');
    if (to <= from) throw badRequest('to must be after from (the period is [from, to))', [{ path: '/to', message: 'not after from' }], 'INVALID_RANGE');
    if (to - from > MAX_PORTFOLIO_MS) throw badRequest('the period may span at most 366 days', [{ path: '/to', message: 'range longer than 366 days' }], 'RANGE_TOO_LONG');
    const q = this.deps.db.readPool;
    const fingerprint = await this.fingerprint(FLEET, from, to, () => fleetFingerprint(q, from, to));
    const key = this.deps.cache.key('portfolio', { from, to }, fingerprint);
    const { value } = await this.deps.cache.getOrCompute(key, to, utcDayStart(this.now()), async () => {
      const nodes = await this.deps.metrics.timeStore('analytics', 'nodes', () => listLiveNodes(q));
      const [energy, money] = await Promise.all([
        this.deps.metrics.timeStore('analytics', 'energy_many', () =>
          energyForNodes(q, nodes.map((n) => ({ nodeId: n.nodeId, telemetryIntervalSeconds: n.telemetryIntervalSeconds, periods: [{ start: from, end: to }] }))),
        ),
        this.deps.metrics.timeStore('analytics', 'chains', () => sumChainsByNode(q, nodes.map((n) => ({ nodeId: n.nodeId, lo: from, hi: to })))),
      ]);
      const hours = (to - from) / H_MS;
      const totals = emptyPortfolio();
      const byType = new Map<string, PortfolioFigures>();
      nodes.forEach((n, i) => {
        const m = nodeMetrics(n, energy[i][0], money.get(n.nodeId), to - from);
        let t = byType.get(n.type);
        if (!t) byType.set(n.type, (t = emptyPortfolio()));
        for (const f of [totals, t]) addNode(f, n, m, energy[i][0], money.get(n.nodeId));
      });
      const finish = (f: PortfolioFigures): PortfolioFigures => ({
        nodes: f.nodes,
        capacityKw: r12(f.capacityKw),
        energyExportedKwh: r12(f.energyExportedKwh),
        energyImportedKwh: r12(f.energyImportedKwh),
        revenueEur: r12(f.revenueEur),
        costEur: r12(f.costEur),
        dispatchCount: f.dispatchCount,
        avgCapacityFactor: f.nodes ? r12(f.avgCapacityFactor / f.nodes) : 0,
        fleetCapacityFactor: f.capacityKw > 0 ? r12(f.energyExportedKwh / (f.capacityKw * hours)) : 0,
        avgAvailabilityPct: f.nodes ? r12(f.avgAvailabilityPct / f.nodes) : 0,
        avgCompletenessPct: f.nodes ? r12(f.avgCompletenessPct / f.nodes) : 0,
      });
      return {
        from: isoUtc(from),
        to: isoUtc(to),
        hours: r12(hours),
        totals: finish(totals),
        byType: [...byType.entries()].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).map(([type, f]) => ({ type, ...finish(f) })),
      };
    });
    return value;
  }

  // ---------------------------------------------------------------- helpers

  /** Generation counters, then the database part: both before the answer is computed (cache.ts). */
  private async fingerprint(owner: string, lo: number, hi: number, fromDb: () => Promise<string>): Promise<string> {
    return this.deps.metrics.timeStore('analytics', 'fingerprint', async () => {
      const gens = await this.deps.cache.generations(owner, lo, hi);
      return `${gens}|${await fromDb()}`;
    });
  }

  private async node(nodeId: string): Promise<NodeFacts> {
    let info = this.deps.nodes.get(nodeId);
    if (!info) {
      // Created a moment ago on another instance: the registry may not have heard yet.
      await this.deps.nodes.reloadNode(nodeId);
      info = this.deps.nodes.get(nodeId);
    }
    if (!info) throw notFound(`unknown node "${nodeId}"`, 'NODE_NOT_FOUND');
    return { nodeId: info.nodeId, type: info.type, capacityKw: info.capacityKw, timezone: info.timezone, telemetryIntervalSeconds: info.telemetryIntervalSeconds };
  }

  /** `tz` if given (an IANA name spelt exactly, as a node's timezone must be), else the node's own. */
  private async zone(tz: string | undefined, node: NodeFacts): Promise<string> {
    const zone = tz ?? node.timezone;
    if (!isValidTimeZone(zone) || (tz !== undefined && !(await timezoneCatalog(this.deps.db.readPool).isKnown(tz)))) {
      throw badRequest(`unknown time zone "${zone}" (names are spelt exactly, as in America/New_York)`, [{ path: '/tz', message: 'must be an IANA time zone' }], 'INVALID_TIMEZONE');
    }
    return zone;
  }

  private dateRange(from: string, to: string): [{ y: number; m: number; d: number }, { y: number; m: number; d: number }] {
    const a = parseDateLabel(from);
    const b = parseDateLabel(to);
    const problems: ErrorDetail[] = [];
    if (!a) problems.push({ path: '/from', message: 'must be a calendar date YYYY-MM-DD' });
    if (!b) problems.push({ path: '/to', message: 'must be a calendar date YYYY-MM-DD' });
    if (problems.length) throw badRequest('from and to must be calendar dates YYYY-MM-DD', problems, 'INVALID_DATE');
    checkBounds(a!, b!);
    const days = Math.round((Date.UTC(b!.y, b!.m - 1, b!.d) - Date.UTC(a!.y, a!.m - 1, a!.d)) / 86_400_000) + 1;
    if (days < 1) throw badRequest('to must not be before from (both dates are included)', [{ path: '/to', message: 'before from' }], 'INVALID_RANGE');
    if (days > MAX_DAYS) throw badRequest(`at most ${MAX_DAYS} days per request (asked ${days})`, [{ path: '/to', message: `range longer than ${MAX_DAYS} days` }], 'RANGE_TOO_LONG');
    return [a!, b!];
  }
}

interface NodeMetrics {
  capacityFactor: number;
  availabilityPct: number;
  completenessPct: number;
  revenuePerKw: number;
}

function nodeMetrics(n: AnalyticsNode | NodeFacts, e: EnergyFigures, money: NodeMoney | undefined, periodMs: number): NodeMetrics {
  const seconds = periodMs / 1000;
  return {
    capacityFactor: e.energyExportedKwh / (n.capacityKw * (seconds / 3600)),
    availabilityPct: (100 * e.availableSeconds) / seconds,
    completenessPct: 100 * completenessRatio(e.readingCount, seconds, n.telemetryIntervalSeconds),
    revenuePerKw: (money?.revenueEur ?? 0) / n.capacityKw,
  };
}

function emptyPortfolio(): PortfolioFigures {
  return { nodes: 0, capacityKw: 0, energyExportedKwh: 0, energyImportedKwh: 0, revenueEur: 0, costEur: 0, dispatchCount: 0, avgCapacityFactor: 0, fleetCapacityFactor: 0, avgAvailabilityPct: 0, avgCompletenessPct: 0 };
}

/** Adds a node to running sums (the avg* fields hold sums until finished). */
function addNode(f: PortfolioFigures, n: AnalyticsNode, m: NodeMetrics, e: EnergyFigures, money: NodeMoney | undefined): void {
  f.nodes++;
  f.capacityKw += n.capacityKw;
  f.energyExportedKwh += e.energyExportedKwh;
  f.energyImportedKwh += e.energyImportedKwh;
  f.revenueEur += money?.revenueEur ?? 0;
  f.costEur += money?.costEur ?? 0;
  f.dispatchCount += money?.dispatchCount ?? 0;
  f.avgCapacityFactor += m.capacityFactor;
  f.avgAvailabilityPct += m.availabilityPct;
  f.avgCompletenessPct += m.completenessPct;
}

function combine(m: PeriodSums, d: PeriodSums): void {
  m.end = d.end;
  m.exported += d.exported;
  m.imported += d.imported;
  m.held += d.held;
  m.integral += d.integral;
  m.available += d.available;
  m.count += d.count;
  m.min = m.min === null ? d.min : d.min === null ? m.min : Math.min(m.min, d.min);
  m.max = m.max === null ? d.max : d.max === null ? m.max : Math.max(m.max, d.max);
  m.completenessSeconds += d.completenessSeconds;
  m.dispatchCount += d.dispatchCount;
  m.revenue += d.revenue;
  m.cost += d.cost;
}

/** Portfolio bounds: RFC 3339, epoch ms, or a date `YYYY-MM-DD` meaning 00:00 UTC of that day. */
function portfolioTime(v: string): number | undefined {
  const d = parseDateLabel(v);
  if (d) return Date.UTC(d.y, d.m - 1, d.d);
  return parseTime(v);
}
