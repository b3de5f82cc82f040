import type { Cache } from '../cache/types.js';
import type { Queryable } from '../db/pool.js';
import { isoUtc } from '../http/time.js';
import type { Metrics } from '../metrics/metrics.js';

/** A node's facts joined with its latest reading (if any), as the portfolio computation needs them. */
export interface PortfolioRow {
  nodeId: string;
  type: string;
  status: string;
  /** Nameplate / max dispatchable power, kW (> 0). */
  capacityKw: number;
  /** kWh, null when the node has no storage. */
  storageCapacityKwh: number | null;
  /** Expected reporting interval, seconds (> 0). */
  telemetryIntervalSeconds: number;
  /** Measurement time of the latest reading, epoch ms; null when the node never reported. */
  latestTs: number | null;
  /** kW, + exports/generates, − consumes/charges; null when no reading. */
  powerKw: number | null;
  /** 0–100, null when not reported. */
  stateOfChargePct: number | null;
  /** ok | warning | fault | offline, or null when not reported. */
  healthStatus: string | null;
}

/** How a node is counted in the real-time portfolio. */
export type NodeState = 'online' | 'stale' | 'offline' | 'fault';

/** Figures over one group of nodes (the whole portfolio or one technology type). */
export interface PortfolioFigures {
  /** Non-decommissioned nodes in the group. */
  nodes: number;
  online: number;
  stale: number;
  offline: number;
  /** Fresh reading with healthStatus `fault`: neither online nor offline. */
  fault: number;
  /** Σ capacityKw over the group's nodes, kW. */
  capacityKw: number;
  /** Σ powerKw over fresh latest readings, kW (signed: + export, − import). */
  currentOutputKw: number;
  /** Σ max(powerKw, 0) over fresh readings, kW. */
  generationKw: number;
  /** Σ max(−powerKw, 0) over fresh readings, kW. */
  consumptionKw: number;
  /** Σ stateOfChargePct/100 × storageCapacityKwh over fresh readings carrying a SoC, kWh. */
  storedEnergyKwh: number;
  /** Σ storageCapacityKwh of the nodes counted in storedEnergyKwh, kWh. */
  storageCapacityKwh: number;
  /** How much the group's net export can rise within seconds, kW (≥ 0); see docs/realtime.md. */
  headroomUpKw: number;
  /** How much the group's net export can fall within seconds, kW (≥ 0). */
  headroomDownKw: number;
}

/** The answer of GET /api/realtime/portfolio. */
export interface Portfolio extends PortfolioFigures {
  /** When the figures were computed (RFC 3339 UTC); at most 5 s old when served. */
  asOf: string;
  /** Freshness rule: a reading is fresh when asOf − timestamp ≤ freshnessFactor × telemetryIntervalSeconds. */
  freshnessFactor: number;
  /** One entry per technology type present in the portfolio, sorted by type. */
  byType: (PortfolioFigures & { type: string })[];
}

/** A reading counts as current when it is not older than this many reporting intervals. */
export const FRESHNESS_FACTOR = 3;

const GENERATORS_DISPATCHABLE = new Set(['chp', 'hydro']);
const GENERATORS_WEATHER = new Set(['solar', 'wind']);
const FLEXIBLE_LOADS = new Set(['data_center', 'ev_charging', 'demand_response']);

/** True when the reading at `tsMs` is not older than FRESHNESS_FACTOR intervals at `asOfMs` (readings from the near future count as fresh). */
export function isFresh(tsMs: number, intervalSeconds: number, asOfMs: number): boolean {
  return asOfMs - tsMs <= FRESHNESS_FACTOR * intervalSeconds * 1000;
}

/**
 * Classifies a node. Order matters: a node that never reported, or whose last word was
 * `offline`, is offline however old that word is (a device that goes offline usually stops
 * reporting, so its last reading going stale is the normal case, not a different state).
 */
export function nodeState(row: PortfolioRow, asOfMs: number): NodeState {
  if (row.latestTs === null) return 'offline';
  if (row.healthStatus === 'offline') return 'offline';
  if (!isFresh(row.latestTs, row.telemetryIntervalSeconds, asOfMs)) return 'stale';
  if (row.healthStatus === 'fault') return 'fault';
  return 'online';
}

/**
 * Headroom of one online, active node at power `p` (kW): how far its net export can move up
 * and down within seconds. Batteries swing between −capacity and +capacity unless full (no
 * charging) or empty (no discharging); dispatchable generators between 0 and capacity;
 * weather-driven generators can only be curtailed; flexible loads between −capacity and 0;
 * `other` is not assumed flexible.
 */
export function headroom(type: string, capacityKw: number, p: number, socPct: number | null): { up: number; down: number } {
  let min: number;
  let max: number;
  if (type === 'battery') {
    min = socPct !== null && socPct >= 100 ? 0 : -capacityKw;
    max = socPct !== null && socPct <= 0 ? 0 : capacityKw;
  } else if (GENERATORS_DISPATCHABLE.has(type)) {
    min = 0;
    max = capacityKw;
  } else if (GENERATORS_WEATHER.has(type)) {
    // Output is what the weather gives: it can be curtailed to zero but not raised.
    return { up: 0, down: Math.max(0, p) };
  } else if (FLEXIBLE_LOADS.has(type)) {
    min = -capacityKw;
    max = 0;
  } else {
    return { up: 0, down: 0 };
  }
  return { up: Math.max(0, max - p), down: Math.max(0, p - min) };
}

function emptyFigures(): PortfolioFigures {
  return {
    nodes: 0,
    online: 0,
    stale: 0,
    offline: 0,
    fault: 0,
    capacityKw: 0,
    currentOutputKw: 0,
    generationKw: 0,
    consumptionKw: 0,
    storedEnergyKwh: 0,
    storageCapacityKwh: 0,
    headroomUpKw: 0,
    headroomDownKw: 0,
  };
}

const SUMMED: (keyof PortfolioFigures)[] = ['capacityKw', 'currentOutputKw', 'generationKw', 'consumptionKw', 'storedEnergyKwh', 'storageCapacityKwh', 'headroomUpKw', 'headroomDownKw'];

function addRow(f: PortfolioFigures, row: PortfolioRow, asOfMs: number): void {
  f.nodes += 1;
  f.capacityKw += row.capacityKw;
  const state = nodeState(row, asOfMs);
  f[state] += 1;
  const fresh = row.latestTs !== null && isFresh(row.latestTs, row.telemetryIntervalSeconds, asOfMs);
  if (!fresh || row.powerKw === null) return;
  const p = row.powerKw;
  f.currentOutputKw += p;
  if (p > 0) f.generationKw += p;
  else f.consumptionKw += -p;
  if (row.stateOfChargePct !== null && row.storageCapacityKwh !== null) {
    f.storedEnergyKwh += (row.stateOfChargePct / 100) * row.storageCapacityKwh;
    f.storageCapacityKwh += row.storageCapacityKwh;
  }
  // Only nodes the operator may dispatch now: online and in service.
  if (state === 'online' && row.status === 'active') {
    const h = headroom(row.type, row.capacityKw, p, row.stateOfChargePct);
    f.headroomUpKw += h.up;
    f.headroomDownKw += h.down;
  }
}

function rounded(f: PortfolioFigures): PortfolioFigures {
  // Sums of floats pick up noise in the last bits; 1 mW / 1 mWh is far below any meter.
  const out = { ...f };
  // Above 2^53 µ-units a float has no fraction left to round (and × 1e6 could overflow).
  for (const k of SUMMED) if (Math.abs(out[k]) < 9e9) out[k] = Math.round(out[k] * 1e6) / 1e6;
  return out;
}

/** Computes the portfolio from node rows at `asOfMs`. Decommissioned nodes are ignored. Pure. */
export function computePortfolio(rows: Iterable<PortfolioRow>, asOfMs: number): Portfolio {
  const total = emptyFigures();
  const byType = new Map<string, PortfolioFigures>();
  for (const row of rows) {
    if (row.status === 'decommissioned') continue;
    let t = byType.get(row.type);
    if (!t) {
      t = emptyFigures();
      byType.set(row.type, t);
    }
    addRow(total, row, asOfMs);
    addRow(t, row, asOfMs);
  }
  return {
    asOf: isoUtc(asOfMs),
    freshnessFactor: FRESHNESS_FACTOR,
    ...rounded(total),
    byType: [...byType.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([type, f]) => ({ type, ...rounded(f) })),
  };
}

interface RowSql {
  node_id: string;
  type: string;
  status: string;
  capacity_kw: number;
  storage_capacity_kwh: number | null;
  telemetry_interval_seconds: number;
  ts_ms: number | null;
  power_kw: number | null;
  soc: number | null;
  health: string | null;
}

// A value of the wrong JSON type reads as missing rather than failing the whole portfolio.
const NUM = (field: string) => `CASE WHEN jsonb_typeof(l.reading->'${field}') = 'number' THEN (l.reading->>'${field}')::float8 END`;

const PORTFOLIO_SQL = `
SELECT n.node_id, n.type, n.status, n.capacity_kw, n.storage_capacity_kwh, n.telemetry_interval_seconds,
       (extract(epoch FROM l.ts) * 1000)::float8 AS ts_ms,
       ${NUM('powerKw')} AS power_kw,
       ${NUM('stateOfChargePct')} AS soc,
       l.reading->>'healthStatus' AS health
  FROM nodes n
  LEFT JOIN telemetry_latest l ON l.node_id = n.node_id
 WHERE n.status <> 'decommissioned'`;

/** Every non-decommissioned node with its latest reading: one query over `nodes` ⟕ `telemetry_latest`. */
export async function loadPortfolioRows(db: Queryable): Promise<PortfolioRow[]> {
  const { rows } = await db.query<RowSql>(PORTFOLIO_SQL);
  return rows.map((r) => ({
    nodeId: r.node_id,
    type: r.type,
    status: r.status,
    capacityKw: r.capacity_kw,
    storageCapacityKwh: r.storage_capacity_kwh,
    telemetryIntervalSeconds: r.telemetry_interval_seconds,
    latestTs: r.ts_ms === null ? null : Math.round(r.ts_ms),
    powerKw: r.power_kw,
    stateOfChargePct: r.soc,
    healthStatus: r.health,
  }));
}

/** Cache key of the portfolio, shared by every instance on one cache. */
export const PORTFOLIO_CACHE_KEY = 'realtime:portfolio';
/** Longest time a computed portfolio is served, seconds. */
export const PORTFOLIO_MAX_AGE_SECONDS = 5;
/** Largest age of a `portfolio` event's figures when it is sent (another instance's may be reused within it). */
export const PORTFOLIO_EVENT_MAX_AGE_MS = 1_000;

/**
 * Serves the real-time portfolio from the shared cache, recomputing at most every 5 s per
 * cache (and once at a time per instance, so a burst of misses runs one query).
 */
export class PortfolioService {
  private inflight?: Promise<Portfolio>;

  constructor(
    private readonly db: Queryable,
    private readonly cache: Cache,
    private readonly metrics: Metrics,
  ) {}

  /**
   * The cached portfolio if it is at most `maxAgeMs` old (default: the cache's 5 s), else a new
   * one. The event stream asks for a fresher one than the cache keeps: its events come every 5 s,
   * and a tick that met an entry about to expire would resend the previous tick's figures.
   */
  async get(maxAgeMs = PORTFOLIO_MAX_AGE_SECONDS * 1000): Promise<Portfolio> {
    const cached = await this.cache.get(PORTFOLIO_CACHE_KEY);
    if (cached) {
      const p = JSON.parse(cached) as Portfolio;
      // The TTL bounds the age already; the check also guards against clock skew between instances.
      if (Date.now() - Date.parse(p.asOf) <= Math.min(maxAgeMs, PORTFOLIO_MAX_AGE_SECONDS * 1000)) {
        this.metrics.cacheRequests.inc({ cache: 'realtime_portfolio', result: 'hit' });
        return p;
      }
    }
    this.metrics.cacheRequests.inc({ cache: 'realtime_portfolio', result: 'miss' });
    this.inflight ??= this.refresh().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  /** Computes now, bypassing the cache, and stores the result for the others. */
  async refresh(): Promise<Portfolio> {
    const asOfMs = Date.now();
    const portfolio = await this.compute(asOfMs);
    // The entry expires 5 s after asOf, not after the query ended.
    const ttl = PORTFOLIO_MAX_AGE_SECONDS - (Date.now() - asOfMs) / 1000;
    if (ttl > 0.05) await this.cache.set(PORTFOLIO_CACHE_KEY, JSON.stringify(portfolio), ttl);
    return portfolio;
  }

  /** Computes the portfolio as of `asOfMs` without touching the cache. */
  async compute(asOfMs: number): Promise<Portfolio> {
    const rows = await this.metrics.timeStore('realtime', 'portfolio_rows', () => loadPortfolioRows(this.db));
    return computePortfolio(rows, asOfMs);
  }
}
