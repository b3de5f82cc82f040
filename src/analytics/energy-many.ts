/**
 * Energy figures of many nodes at once, set-based: the multi-node counterpart of
 * `energyByPeriods` (src/telemetry/energy.ts) for the portfolio and peer groups. It uses the
 * telemetry module's own planning (`planPieces`: coarsest clean rollup tiers, finer at edges and
 * around dirty buckets) and hold rule (`accumulate` over raw readings for what no tier covers),
 * so its figures equal `energyByPeriods` node by node; only the SQL is batched: one statement for
 * dirty marks, one for every node's tier rows, one for every node's raw readings.
 */
import type { Queryable } from '../db/pool.js';
import type { Period } from '../telemetry/buckets.js';
import { planPieces } from '../telemetry/query-engine.js';
import { accumulate, mergeRanges, type ReadingColumns } from '../telemetry/rollup-compute.js';
import { POWER } from '../telemetry/rollup-fields.js';
import { loggedRangesSql, TIER_MS, TIER_TABLE, withLoggedBuckets, type Tier } from '../telemetry/rollup-store.js';

/** One node and the periods wanted for it. */
export interface NodePeriods {
  nodeId: string;
  /** Expected reporting interval (s, > 0): the hold cap is 3 × this. */
  telemetryIntervalSeconds: number;
  /** Sorted, non-overlapping half-open periods (epoch ms). */
  periods: readonly Period[];
}

/** Power figures of one node over one period (same meanings as `EnergyPeriod`, unrounded). */
export interface EnergyFigures {
  /** kWh ≥ 0 */
  energyExportedKwh: number;
  /** kWh ≥ 0 */
  energyImportedKwh: number;
  /** Seconds covered by readings' holds. */
  heldSeconds: number;
  /** Held seconds with health not fault/offline. */
  availableSeconds: number;
  /** Σ powerKw × seconds held (kW·s). */
  integralKws: number;
  /** Readings timestamped in the period. */
  readingCount: number;
  /** kW, null without readings. */
  minPowerKw: number | null;
  maxPowerKw: number | null;
}

const QUARTER = TIER_MS['15m'];
/**
 * Tiers this module plans with. It reads every piece with one index range probe, and a probe costs
 * far more than the rows it returns, so fewer, longer pieces are cheaper here than the 2/4/8-hour
 * tiers' many one-row pieces: measured (same process, interleaved) 1 node × 365 Berlin days
 * 12.5 ms against 20.6 ms with every tier, 7 nodes × 30 days 9.2 against 13.4 ms.
 */
const JOIN_LEVELS: readonly Tier[] = ['1d', '1h', '15m'];
const iso = (ms: number) => new Date(ms).toISOString();
// Bounds the size of the unnest arrays of one statement.
const PIECES_PER_QUERY = 20_000;

function empty(): EnergyFigures {
  return { energyExportedKwh: 0, energyImportedKwh: 0, heldSeconds: 0, availableSeconds: 0, integralKws: 0, readingCount: 0, minPowerKw: null, maxPowerKw: null };
}

function addMin(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.min(a, b);
}
function addMax(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.max(a, b);
}

/** Figures per item and period (`result[i][j]` for `items[i].periods[j]`). */
export async function energyForNodes(q: Queryable, items: readonly NodePeriods[]): Promise<EnergyFigures[][]> {
  const out = items.map((it) => it.periods.map(empty));
  const live = items.map((it, i) => ({ it, i })).filter(({ it }) => it.periods.length > 0);
  if (live.length === 0) return out;
  const nodeIds = [...new Set(live.map(({ it }) => it.nodeId))];
  const lo = Math.floor(Math.min(...live.map(({ it }) => it.periods[0].start)) / QUARTER) * QUARTER;
  const hi = Math.max(...live.map(({ it }) => it.periods[it.periods.length - 1].end));

  // Dirty marks before rollups, as aggregatePeriods does: a write acknowledged before the call is reflected.
  // The invalidation log covers every node: read in the same statement as the marks (see
  // loadDirtyState), and returned once, with the first node's row.
  const { rows: st } = await q.query<{ node_id: string; cap: number | null; dirty: number[] | null; logged: number[][] | null }>(
    `SELECT n.node_id, s.cap_seconds AS cap,
            (SELECT array_agg((extract(epoch FROM d.bucket_start) * 1000)::float8 ORDER BY d.bucket_start)
               FROM telemetry_dirty_buckets d WHERE d.node_id = n.node_id AND d.bucket_start >= $2 AND d.bucket_start < $3) AS dirty,
            CASE WHEN n.k = 1 THEN ${loggedRangesSql('$2::timestamptz', '$3::timestamptz')} END AS logged
     FROM unnest($1::text[]) WITH ORDINALITY AS n(node_id, k) LEFT JOIN telemetry_rollup_state s ON s.node_id = n.node_id
     ORDER BY n.k`,
    [nodeIds, iso(lo), iso(Math.max(lo, hi))],
  );
  const logged = st[0]?.logged ?? null;
  const state = new Map(st.map((r) => [r.node_id, { cap: r.cap, dirty: withLoggedBuckets(r.dirty ?? [], logged) }]));

  type Piece = { tier: Tier; node: string; lo: number; hi: number; item: number; period: number };
  const pieces: Piece[] = [];
  const raw: { item: number; capMs: number; periods: { start: number; end: number; period: number }[] }[] = [];
  for (const { it, i } of live) {
    const s = state.get(it.nodeId) ?? { cap: null, dirty: [] };
    const capMs = 3 * it.telemetryIntervalSeconds * 1000;
    const useRollups = s.cap === null || s.cap * 1000 === capMs;
    const plan = planPieces(it.periods, s.dirty, useRollups, JOIN_LEVELS);
    for (const p of plan.pieces) pieces.push({ tier: p.tier, node: it.nodeId, lo: p.lo, hi: p.hi, item: i, period: p.idx });
    if (plan.raw.length > 0) {
      raw.push({ item: i, capMs, periods: plan.raw.map((r) => ({ start: r.lo, end: r.hi, period: r.idx })).sort((a, b) => a.start - b.start) });
    }
  }

  for (let c = 0; c < pieces.length; c += PIECES_PER_QUERY) {
    await addTiers(q, pieces.slice(c, c + PIECES_PER_QUERY), out);
  }
  if (raw.length > 0) await addRaw(q, items, raw, out);
  return out;
}

/**
 * Folds the rollup rows under `pieces` into `out`, one statement for all tiers. Each piece is one
 * index range probe: LATERAL with OFFSET 0 keeps that plan. Joined plainly, the planner hashed the
 * pieces on node alone and compared every rollup row of a node with every piece of it (1 node ×
 * 365 days: 3.2 M comparisons, 500 ms, against 12 ms probed).
 */
async function addTiers(q: Queryable, pieces: readonly { tier: Tier; node: string; lo: number; hi: number; item: number; period: number }[], out: EnergyFigures[][]): Promise<void> {
  const params: unknown[] = [POWER.code];
  const selects: string[] = [];
  for (const tier of Object.keys(TIER_TABLE) as Tier[]) {
    const mine = pieces.filter((p) => p.tier === tier);
    if (mine.length === 0) continue;
    params.push(mine.map((p) => p.node), mine.map((p) => iso(p.lo)), mine.map((p) => iso(p.hi)), mine.map((p) => p.item), mine.map((p) => p.period));
    const n = params.length;
    selects.push(`SELECT p.item, p.period, sum(r.n)::float8 AS n, min(r.min) AS min, max(r.max) AS max, sum(r.integral) AS integral, sum(r.held) AS held,
        sum(r.exported_kwh) AS exported, sum(r.imported_kwh) AS imported, sum(r.available_s) AS available
      FROM unnest($${n - 4}::text[], $${n - 3}::timestamptz[], $${n - 2}::timestamptz[], $${n - 1}::int[], $${n}::int[]) AS p(node, lo, hi, item, period)
      CROSS JOIN LATERAL (SELECT * FROM ${TIER_TABLE[tier]} x
                          WHERE x.node_id = p.node AND x.field = $1 AND x.bucket_start >= p.lo AND x.bucket_start < p.hi OFFSET 0) r
      GROUP BY p.item, p.period`);
  }
  if (selects.length === 0) return;
  const { rows } = await q.query<{ item: number; period: number; n: number; min: number | null; max: number | null; integral: number; held: number; exported: number | null; imported: number | null; available: number | null }>(
    selects.join('\nUNION ALL\n'),
    params,
  );
  for (const r of rows) {
    addFigures(out[r.item][r.period], r.n, r.min, r.max, r.integral, r.held, r.exported ?? 0, r.imported ?? 0, r.available ?? 0);
  }
}

/** Adds one piece (a rollup row or a raw computation) to a period's running figures. */
function addFigures(f: EnergyFigures, n: number, min: number | null, max: number | null, integral: number, held: number, exported: number, imported: number, available: number): void {
  f.readingCount += n;
  if (n > 0) {
    f.minPowerKw = addMin(f.minPowerKw, min);
    f.maxPowerKw = addMax(f.maxPowerKw, max);
  }
  f.integralKws += integral;
  f.heldSeconds += held;
  f.energyExportedKwh += exported;
  f.energyImportedKwh += imported;
  f.availableSeconds += available;
}

async function addRaw(
  q: Queryable,
  items: readonly NodePeriods[],
  raw: readonly { item: number; capMs: number; periods: { start: number; end: number; period: number }[] }[],
  out: EnergyFigures[][],
): Promise<void> {
  // Readings needed: each raw piece and the cap before it (a reading there can hold into it).
  const ranges = raw.map((r) => ({ item: r.item, ranges: mergeRanges(r.periods.map((p) => ({ lo: p.start - r.capMs, hi: p.end })), 0) }));
  const nodes: string[] = [];
  const los: string[] = [];
  const his: string[] = [];
  const keys: number[] = [];
  // The bounds of all ranges go as plain parameters too: the planner prunes telemetry's daily
  // partitions on those, not on the joined ranges. Measured on the query bench's data (366
  // partitions), 32 recent 15-minute ranges over 8 nodes: 275-780 ms → 2.6-2.9 ms.
  let minLo = Infinity;
  let maxHi = -Infinity;
  for (const r of ranges) {
    for (const g of r.ranges) {
      nodes.push(items[r.item].nodeId);
      los.push(iso(g.lo));
      his.push(iso(g.hi));
      keys.push(r.item);
      minLo = Math.min(minLo, g.lo);
      maxHi = Math.max(maxHi, g.hi);
    }
  }
  const { rows } = await q.query({
    text: `SELECT p.k, (extract(epoch FROM t.ts) * 1000)::float8 AS t, t.health_status, t.${POWER.column}
           FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int[]) AS p(node, lo, hi, k)
           JOIN telemetry t ON t.node_id = p.node AND t.ts >= p.lo AND t.ts < p.hi
           WHERE t.ts >= $5 AND t.ts < $6
           ORDER BY p.k, t.ts`,
    values: [nodes, los, his, keys, iso(minLo), iso(maxHi)],
    rowMode: 'array',
  });
  const byItem = new Map<number, ReadingColumns>();
  for (const r of rows as [number, number, string | null, number | null][]) {
    let cols = byItem.get(r[0]);
    if (!cols) byItem.set(r[0], (cols = { ts: [], values: [[]], health: [] }));
    cols.ts.push(r[1]);
    cols.health.push(r[2]);
    cols.values[0].push(r[3]);
  }
  for (const r of raw) {
    const readings = byItem.get(r.item) ?? { ts: [], values: [[]], health: [] };
    const partials = accumulate(readings, r.periods, r.capMs, 0);
    r.periods.forEach((p, k) => {
      const a = partials[k].fields[0];
      const e = partials[k].extras;
      addFigures(out[r.item][p.period], a.n, a.min, a.max, a.integral, a.held, e.exportedKwh, e.importedKwh, e.availableS);
    });
  }
}
