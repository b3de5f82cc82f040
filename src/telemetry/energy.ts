/**
 * Energy and power semantics, in one place, for analytics and anyone else who needs them.
 *
 * Energy is the time integral of powerKw. Each reading holds its value from its timestamp until
 * the next reading, for at most cap = 3 × the node's telemetryIntervalSeconds; a longer gap is
 * missing time (no energy, not held, not available). Exported energy integrates positive power,
 * imported energy integrates negative power (reported as a positive number). A hold crosses
 * period boundaries: a period's figures include the part of an earlier reading's hold that falls
 * into it. Figures come from the rollups (invalidated parts from raw readings) and equal a
 * computation over the raw readings (to 12 significant digits).
 */
import type { Queryable } from '../db/pool.js';
import type { Period } from './buckets.js';
import { aggregatePeriods, roundSig } from './query-engine.js';
import { POWER } from './rollup-fields.js';

export { calendarPeriods, fixedPeriods, formatInZone, isValidTimeZone, localDayStart, localDays, localMonths, localWeeks, offsetAt, type CalendarUnit, type Period } from './buckets.js';

/** What energy computations need to know about a node. */
export interface EnergyNode {
  nodeId: string;
  /** Expected reporting interval (s, > 0): the hold cap is 3 × this. */
  telemetryIntervalSeconds: number;
}

/** Energy and power figures of one node over one half-open period. */
export interface EnergyPeriod {
  /** Period start (epoch ms, inclusive). */
  start: number;
  /** Period end (epoch ms, exclusive). */
  end: number;
  /** The period's label when it had one (e.g. `2026-03-08`). */
  label?: string;
  /** ∫ max(powerKw, 0) dt over held time in the period, kWh ≥ 0. */
  energyExportedKwh: number;
  /** ∫ max(−powerKw, 0) dt over held time in the period, kWh ≥ 0. */
  energyImportedKwh: number;
  /** Seconds of the period covered by readings' holds (0 … period length). */
  heldSeconds: number;
  /** Held seconds of readings whose healthStatus is not `fault` or `offline` (≤ heldSeconds). */
  availableSeconds: number;
  /** Time-weighted average power over held time (kW); null when nothing was held. */
  avgPowerKw: number | null;
  /** Smallest / largest powerKw of readings timestamped in the period (kW); null without readings. */
  minPowerKw: number | null;
  maxPowerKw: number | null;
  /** Readings timestamped in the period. */
  readingCount: number;
  /** Time of the first / last reading timestamped in the period (epoch ms); null without readings. */
  firstReadingAt: number | null;
  lastReadingAt: number | null;
}

export interface EnergyResult {
  /** Coarsest source used: `1d`, `1h`, `15m` or `raw`. */
  tier: string;
  /** One entry per input period, in input order. */
  periods: EnergyPeriod[];
}

/**
 * Energy and power figures of `node` for each period. `periods` must be sorted by start and must
 * not overlap (e.g. `localDays(tz, '2026-03-01', '2026-03-31')`); gaps between them are allowed.
 * Throws RangeError on unsorted or overlapping periods.
 */
export async function energyByPeriods(q: Queryable, node: EnergyNode, periods: readonly Period[]): Promise<EnergyResult> {
  for (let i = 0; i < periods.length; i++) {
    const p = periods[i];
    if (!(p.end > p.start)) throw new RangeError(`period ${i} is empty or reversed`);
    if (i > 0 && p.start < periods[i - 1].end) throw new RangeError(`period ${i} overlaps or precedes period ${i - 1}`);
  }
  const capMs = 3 * node.telemetryIntervalSeconds * 1000;
  const r = await aggregatePeriods(q, node.nodeId, capMs, periods, [POWER], { firstLast: false });
  return {
    tier: r.tier,
    periods: periods.map((p, i) => {
      const a = r.partials[i].fields[0];
      const e = r.partials[i].extras;
      return {
        start: p.start,
        end: p.end,
        ...(p.label !== undefined ? { label: p.label } : {}),
        energyExportedKwh: roundSig(e.exportedKwh),
        energyImportedKwh: roundSig(e.importedKwh),
        heldSeconds: roundSig(a.held),
        availableSeconds: roundSig(e.availableS),
        avgPowerKw: a.held > 0 ? roundSig(a.integral / a.held) : null,
        minPowerKw: a.n > 0 ? a.min : null,
        maxPowerKw: a.n > 0 ? a.max : null,
        readingCount: a.n,
        firstReadingAt: a.n > 0 ? a.firstTs : null,
        lastReadingAt: a.n > 0 ? a.lastTs : null,
      };
    }),
  };
}
