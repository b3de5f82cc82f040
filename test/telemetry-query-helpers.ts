/**
 * Test helpers for rollups and historical queries: nodes and readings written straight into
 * PostgreSQL (marking dirty buckets by the ingestion's rule), and an independent reference
 * computation over raw readings.
 */
import type { Queryable } from '../src/db/pool.js';
import type { TestApp } from './support/app.js';

export interface TestReading {
  /** epoch ms */
  ts: number;
  powerKw: number;
  voltageV?: number | null;
  frequencyHz?: number | null;
  stateOfChargePct?: number | null;
  temperatureC?: number | null;
  healthStatus?: string | null;
}

export interface TestNode {
  nodeId: string;
  timezone?: string;
  telemetryIntervalSeconds?: number;
  capacityKw?: number;
  type?: string;
}

/** Inserts (or updates) a node row directly and reloads the registry. */
export async function putNode(t: TestApp, n: TestNode): Promise<void> {
  const doc = {
    nodeId: n.nodeId,
    name: n.nodeId,
    type: n.type ?? 'battery',
    status: 'active',
    capacityKw: n.capacityKw ?? 1000,
    timezone: n.timezone ?? 'UTC',
    telemetryIntervalSeconds: n.telemetryIntervalSeconds ?? 60,
  };
  await t.container.db.pool.query(
    `INSERT INTO nodes (node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds, doc)
     VALUES ($1, $2, 'active', $3, $4, $5, $6)
     ON CONFLICT (node_id) DO UPDATE SET timezone = EXCLUDED.timezone, telemetry_interval_seconds = EXCLUDED.telemetry_interval_seconds,
       capacity_kw = EXCLUDED.capacity_kw, doc = EXCLUDED.doc`,
    [n.nodeId, doc.type, doc.capacityKw, doc.timezone, doc.telemetryIntervalSeconds, JSON.stringify(doc)],
  );
  await t.container.nodes.reloadAll();
}

const QUARTER = 900_000;

/**
 * Writes readings (insert, or replace on the same timestamp) and, in the same transaction, marks
 * every 15-minute bucket overlapping [ts, ts + 3 × interval) of each one, as ingestion does.
 */
export async function writeReadings(pool: Queryable, nodeId: string, readings: readonly TestReading[], intervalSeconds: number): Promise<void> {
  if (readings.length === 0) return;
  const days = [...new Set(readings.map((r) => new Date(r.ts).toISOString().slice(0, 10)))];
  const capMs = 3 * intervalSeconds * 1000;
  const sql = `
    WITH ins AS (
      INSERT INTO telemetry (node_id, ts, received_at, power_kw, voltage_v, frequency_hz, state_of_charge_pct, temperature_c, health_status)
      -- Arrived a second ago: a correction sent through the service right after arrives later
      -- (its arrival stamp has millisecond resolution; now() has microseconds).
      SELECT $1, to_timestamp(t / 1000.0), now() - interval '1 second', p, v, f, s, c, h
      FROM unnest($2::float8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::text[]) AS u(t, p, v, f, s, c, h)
      ON CONFLICT (node_id, ts) DO UPDATE SET power_kw = EXCLUDED.power_kw, voltage_v = EXCLUDED.voltage_v, frequency_hz = EXCLUDED.frequency_hz,
        state_of_charge_pct = EXCLUDED.state_of_charge_pct, temperature_c = EXCLUDED.temperature_c, health_status = EXCLUDED.health_status
      RETURNING 1
    )
    INSERT INTO telemetry_dirty_buckets (node_id, bucket_start)
    SELECT $1, to_timestamp(b / 1000.0) FROM unnest($9::float8[]) b
    ON CONFLICT (node_id, bucket_start) DO UPDATE SET marked_at = clock_timestamp()`;
  // Partitions must exist before the insert plans its target: create them first.
  await pool.query('SELECT ensure_telemetry_partition(x::date) FROM unnest($1::text[]) x', [days]);
  const CHUNK = 20_000;
  for (let i = 0; i < readings.length; i += CHUNK) {
    const part = readings.slice(i, i + CHUNK);
    const partMarks = new Set<number>();
    for (const r of part) for (let b = Math.floor(r.ts / QUARTER) * QUARTER; b < r.ts + capMs; b += QUARTER) partMarks.add(b);
    await pool.query(sql, [
      nodeId,
      part.map((r) => r.ts),
      part.map((r) => r.powerKw),
      part.map((r) => r.voltageV ?? null),
      part.map((r) => r.frequencyHz ?? null),
      part.map((r) => r.stateOfChargePct ?? null),
      part.map((r) => r.temperatureC ?? null),
      part.map((r) => r.healthStatus ?? null),
      [...partMarks],
    ]);
  }
}

/** Reference figures of one field over one period, computed naively from the readings. */
export interface RefAgg {
  count: number;
  sum: number | null;
  avg: number | null;
  min: number | null;
  max: number | null;
  first: number | null;
  last: number | null;
  twa: number | null;
  heldSeconds: number;
  exportedKwh: number;
  importedKwh: number;
  availableSeconds: number;
  readings: number;
}

type FieldName = 'powerKw' | 'voltageV' | 'frequencyHz' | 'stateOfChargePct' | 'temperatureC';

/**
 * The reference: straight from the definition. Each reading holds until the next reading or
 * cap, whichever is first; a period's integral is the overlap of those holds with it.
 */
export function reference(readings: readonly TestReading[], capMs: number, start: number, end: number, field: FieldName = 'powerKw'): RefAgg {
  const sorted = [...readings].sort((a, b) => a.ts - b.ts);
  const inside = sorted.filter((r) => r.ts >= start && r.ts < end);
  const vals = inside.map((r) => r[field]).filter((v): v is number => typeof v === 'number');
  let integral = 0;
  let held = 0;
  let exp = 0;
  let imp = 0;
  let avail = 0;
  for (let i = 0; i < sorted.length; i++) {
    const r = sorted[i];
    const holdEnd = Math.min(i + 1 < sorted.length ? sorted[i + 1].ts : Infinity, r.ts + capMs);
    const ov = Math.max(0, Math.min(holdEnd, end) - Math.max(r.ts, start)) / 1000;
    if (ov === 0) continue;
    const v = r[field];
    if (typeof v !== 'number') continue;
    integral += v * ov;
    held += ov;
    if (field === 'powerKw') {
      if (v > 0) exp += (v * ov) / 3600;
      if (v < 0) imp += (-v * ov) / 3600;
      if (r.healthStatus !== 'fault' && r.healthStatus !== 'offline') avail += ov;
    }
  }
  const n = vals.length;
  return {
    count: n,
    sum: n ? vals.reduce((a, b) => a + b, 0) : null,
    avg: n ? vals.reduce((a, b) => a + b, 0) / n : null,
    min: n ? Math.min(...vals) : null,
    max: n ? Math.max(...vals) : null,
    first: n ? vals[0] : null,
    last: n ? vals[n - 1] : null,
    twa: held > 0 ? integral / held : null,
    heldSeconds: held,
    exportedKwh: exp,
    importedKwh: imp,
    availableSeconds: avail,
    readings: inside.length,
  };
}

/** Equal within a relative 1e-9 (sums in another order differ in the last bits), or both null. */
export function close(actual: number | null | undefined, expected: number | null, what: string): void {
  if (expected === null) {
    if (actual !== null && actual !== undefined) throw new Error(`${what}: expected null, got ${actual}`);
    return;
  }
  if (typeof actual !== 'number') throw new Error(`${what}: expected ${expected}, got ${actual}`);
  const tol = 1e-9 * Math.max(1, Math.abs(expected));
  if (Math.abs(actual - expected) > tol) throw new Error(`${what}: expected ${expected}, got ${actual}`);
}

export { rng } from './support/rng.js';

/** Holds the refresher's job lock on a separate connection, so timer runs skip while a test looks at unrefreshed state. */
export async function holdRefresherLock(t: TestApp): Promise<() => Promise<void>> {
  const client = await t.container.db.pool.connect();
  await client.query("SELECT pg_advisory_lock(7460100, hashtext('rollup-refresh'))");
  return async () => {
    await client.query("SELECT pg_advisory_unlock(7460100, hashtext('rollup-refresh'))");
    client.release();
  };
}
