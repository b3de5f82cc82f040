/**
 * Exact aggregation of one node's telemetry over arbitrary half-open periods, from the coarsest
 * rollup tiers that answer each part exactly, with raw readings for what no tier covers (edges
 * off the 15-minute grid, buckets marked dirty since their last refresh, 1- and 5-minute buckets).
 *
 * Sums are floating point, so their value depends on the order of the additions. Every answer
 * adds in one canonical order, whichever source serves each part: a period is the fold, in time
 * order, of its canonical units (the coarsest aligned tier units, finer at its edges, raw pieces
 * off the 15-minute grid); a unit is its tier row, or, when the row cannot serve (dirty, or the
 * rollups' cap differs), the fold in time order of its child units down to 15-minute buckets
 * computed from raw readings, which is how the refresher builds the rows (the SQL composition
 * sums children ORDER BY bucket_start). Raw and rollup answers are therefore the same doubles,
 * not just close ones.
 */
import type { Queryable } from '../db/pool.js';
import { accumulate, emptyAgg, emptyExtras, mergeAgg, mergeExtras, mergeRanges, type PeriodPartial } from './rollup-compute.js';
import { POWER, type NumericField } from './rollup-fields.js';
import { addTierAggregates, loadDirtyState, loadReadings, TIER_MS, type AggParts, type Tier, type TierPiece } from './rollup-store.js';

/** Coarsest first. */
const LEVELS: readonly Tier[] = ['1d', '8h', '4h', '2h', '1h', '15m'];
const QUARTER = TIER_MS['15m'];

export interface AggregateResult {
  /** Coarsest tier that contributed (`raw` when every part came from raw readings). */
  tier: Tier | 'raw';
  /** Every source that contributed, coarsest first. */
  sources: (Tier | 'raw')[];
  /** Per period, in input order; field partials in the order of `fields`. */
  partials: PeriodPartial[];
}

export interface RawPiece {
  lo: number;
  hi: number;
  idx: number;
}

function lowerBound(xs: readonly number[], v: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Splits periods into tier pieces and raw pieces: each period is covered by the coarsest
 * aligned tier ranges free of dirty buckets, recursively finer at its edges and around dirty
 * buckets, and raw readings for what is left. `dirty` are sorted 15-minute bucket starts;
 * `levels` the tiers to plan with, coarsest first (default: all of them). The canonical tree's
 * slots in time order, with adjacent pieces of one source within a period merged into one.
 */
export function planPieces(periods: readonly { start: number; end: number }[], dirty: readonly number[], useRollups: boolean, levels: readonly Tier[] = LEVELS): { pieces: TierPiece[]; raw: RawPiece[] } {
  const tree = canonicalTree(periods, dirty, useRollups, levels);
  const source: (Tier | 'raw')[] = new Array(tree.slots);
  const span: { lo: number; hi: number }[] = new Array(tree.slots);
  for (const u of tree.units) {
    source[u.idx] = u.tier;
    span[u.idx] = u;
  }
  for (const r of tree.raw) {
    source[r.idx] = 'raw';
    span[r.idx] = r;
  }
  const pieces: TierPiece[] = [];
  const raw: RawPiece[] = [];
  tree.periods.forEach((nodes, idx) => {
    let last: { kind: Tier | 'raw'; lo: number; hi: number } | undefined;
    const flush = () => {
      if (!last) return;
      if (last.kind === 'raw') raw.push({ lo: last.lo, hi: last.hi, idx });
      else pieces.push({ tier: last.kind, lo: last.lo, hi: last.hi, idx });
    };
    const visit = (n: EvalNode): void => {
      if (typeof n !== 'number') return n.forEach(visit);
      const kind = source[n];
      const { lo, hi } = span[n];
      if (last && last.kind === kind && last.hi === lo) last.hi = hi;
      else {
        flush();
        last = { kind, lo, hi };
      }
    };
    nodes.forEach(visit);
    flush();
  });
  return { pieces, raw };
}

/** `fields` with powerKw first (added when absent): reading counts, energy and availability come from it. */
export function withPowerFirst(fields: readonly NumericField[]): NumericField[] {
  return [POWER, ...fields.filter((f) => f !== POWER)];
}

/**
 * Aggregates `fields` (powerKw must be first: see `withPowerFirst`) of one node over `periods`
 * (sorted, non-overlapping, half-open epoch ms) under the hold cap `capMs`. The answer equals
 * `accumulate` over the raw readings, whichever tiers serve it. Reads dirty marks before
 * rollups, so a write acknowledged before the call is always reflected. `opts` names what the
 * caller needs beyond count, sum, min, max and the time-weighted pieces (default: everything); what
 * it leaves out is left unknown where rollups serve (see `addTierAggregates`).
 */
export async function aggregatePeriods(
  q: Queryable,
  nodeId: string,
  capMs: number,
  periods: readonly { start: number; end: number }[],
  fields: readonly NumericField[],
  opts: Partial<AggParts> = {},
): Promise<AggregateResult> {
  if (fields[0] !== POWER) throw new Error('aggregatePeriods: powerKw must be the first field');
  if (periods.length === 0) return { tier: 'raw', sources: [], partials: [] };
  const lo = Math.floor(periods[0].start / QUARTER) * QUARTER;
  const hi = periods[periods.length - 1].end;
  const state = await loadDirtyState(q, nodeId, lo, hi);
  const useRollups = state.capSeconds === null || state.capSeconds * 1000 === capMs;
  const tree = canonicalTree(periods, state.dirty, useRollups);

  const fieldIndex = new Map(fields.map((f, i) => [f.code, i]));
  const parts: AggParts = { firstLast: opts.firstLast ?? true, times: opts.times ?? true, extras: opts.extras ?? true };
  // Each tier slot takes its row's aggs as they are (fields null until then; empty where no row);
  // raw slots are filled below.
  const slots: PeriodPartial[] = new Array<PeriodPartial>(tree.slots);
  // Without extras the rows carry none (rowColumns), so the slots share one empty record, never written.
  const noExtras = emptyExtras();
  for (const u of tree.units) slots[u.idx] = { fields: new Array(fields.length).fill(null), extras: parts.extras ? emptyExtras() : noExtras };
  await addTierAggregates(q, nodeId, fields.map((f) => f.code), tree.units, slots, fieldIndex, parts);
  for (const u of tree.units) {
    const fs = slots[u.idx].fields;
    for (let f = 0; f < fs.length; f++) fs[f] ??= emptyAgg();
  }

  if (tree.raw.length > 0) {
    const raw = [...tree.raw].sort((a, b) => a.lo - b.lo);
    const ranges = mergeRanges(raw.map((r) => ({ lo: r.lo - capMs, hi: r.hi })), 0);
    const readings = await loadReadings(q, nodeId, fields, ranges);
    const rawPartials = accumulate(readings, raw.map((r) => ({ start: r.lo, end: r.hi })), capMs, 0);
    raw.forEach((r, i) => (slots[r.idx] = rawPartials[i]));
  }

  const partials = tree.periods.map((nodes) => fold(nodes, slots, fields.length));

  const used = new Set<Tier | 'raw'>(tree.units.map((p) => p.tier));
  if (tree.raw.length > 0) used.add('raw');
  const sources = ([...LEVELS, 'raw'] as const).filter((t) => used.has(t));
  return { tier: sources[0] ?? 'raw', sources, partials };
}

/** A node of a period's evaluation tree: a slot (a tier row or a raw piece) or the fold of its children, in time order. */
export type EvalNode = number | EvalNode[];

export interface CanonicalTree {
  /** Per period, its top-level nodes in time order. */
  periods: EvalNode[][];
  /** Tier rows to read, one unit each; `idx` is the unit's slot. */
  units: TierPiece[];
  /** Raw pieces to compute from readings; `idx` is the piece's slot. */
  raw: RawPiece[];
  /** Number of slots. */
  slots: number;
}

/**
 * Each period's canonical units (see the module comment), and how each is served: its tier row
 * when it is clean and the rollups' cap is the node's, else its children (down to 15-minute
 * buckets from raw). `dirty` are sorted 15-minute bucket starts; `levels` the tiers, coarsest
 * first, each a whole multiple of the next (default: all of them).
 */
export function canonicalTree(periods: readonly { start: number; end: number }[], dirty: readonly number[], useRollups: boolean, levels: readonly Tier[] = LEVELS): CanonicalTree {
  const units: TierPiece[] = [];
  const raw: RawPiece[] = [];
  let slots = 0;
  const clean = (a: number, b: number) => {
    const k = lowerBound(dirty, a);
    return k >= dirty.length || dirty[k] >= b;
  };
  const unit = (level: number, lo: number): EvalNode => {
    const tier = levels[level];
    const hi = lo + TIER_MS[tier];
    if (useRollups && clean(lo, hi)) {
      units.push({ tier, lo, hi, idx: slots });
      return slots++;
    }
    if (level === levels.length - 1) {
      raw.push({ lo, hi, idx: slots });
      return slots++;
    }
    const children: EvalNode[] = [];
    for (let c = lo; c < hi; c += TIER_MS[levels[level + 1]]) children.push(unit(level + 1, c));
    return children;
  };
  const decompose = (a: number, b: number, level: number, out: EvalNode[]): void => {
    if (a >= b) return;
    if (level >= levels.length) {
      raw.push({ lo: a, hi: b, idx: slots });
      out.push(slots++);
      return;
    }
    const g = TIER_MS[levels[level]];
    const A = Math.ceil(a / g) * g;
    const B = Math.floor(b / g) * g;
    if (A >= B) {
      decompose(a, b, level + 1, out);
      return;
    }
    decompose(a, A, level + 1, out);
    for (let t = A; t < B; t += g) out.push(unit(level, t));
    decompose(B, b, level + 1, out);
  };
  const out = periods.map((p) => {
    const nodes: EvalNode[] = [];
    decompose(p.start, p.end, 0, nodes);
    return nodes;
  });
  return { periods: out, units, raw, slots };
}

/**
 * The fold of `nodes` in order, each node a slot or the fold of its own children. A lone slot is
 * its own fold (adding it to an empty partial changes no value), so it is returned as it is.
 */
function fold(nodes: readonly EvalNode[], slots: readonly PeriodPartial[], nf: number): PeriodPartial {
  if (nodes.length === 1 && typeof nodes[0] === 'number') return slots[nodes[0]];
  const acc: PeriodPartial = { fields: Array.from({ length: nf }, emptyAgg), extras: emptyExtras() };
  for (const n of nodes) {
    const v = typeof n === 'number' ? slots[n] : fold(n, slots, nf);
    for (let f = 0; f < nf; f++) mergeAgg(acc.fields[f], v.fields[f]);
    mergeExtras(acc.extras, v.extras);
  }
  return acc;
}

/** Rounds to 12 significant digits: tiers sum in a different order than raw, which differs only in the last bits. */
export function roundSig(v: number): number {
  return Number.isFinite(v) ? Number(v.toPrecision(12)) : v;
}
