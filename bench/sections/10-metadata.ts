/**
 * Node metadata over real HTTP (listening socket, keep-alive fetch) on a fleet of 10,000 nodes:
 * latency of GET /api/metadata/:nodeId and of GET /api/nodes/nearby, p50 and p99 per run,
 * median over ctx.runs runs.
 */
import pg from 'pg';
import { boundingBox } from '../../src/metadata/geo.js';
import { nearbyStatement } from '../../src/metadata/store.js';
import { latencies, median, percentile, rng, startBenchServer, type BenchSection } from '../harness.js';

const FLEET = 10_000;
const GETS_PER_RUN = 1000;
const NEARBY_PER_RUN = 300;
const NEARBY_RADIUS_KM = 100;
const KEY = 'bench-metadata-key-0001';
const TYPES = ['solar', 'wind', 'battery', 'data_center', 'ev_charging', 'chp', 'hydro', 'demand_response', 'other'];
const STATUSES = ['active', 'active', 'active', 'inactive', 'maintenance'];

/** A fleet spread over Europe (lat 36..70, lon -10..40), as documents the API would store. */
function fleet(): Record<string, unknown>[] {
  const r = rng(10);
  return Array.from({ length: FLEET }, (_, i) => ({
    nodeId: `node-${String(i).padStart(5, '0')}`,
    name: `Bench node ${i}`,
    type: TYPES[i % TYPES.length],
    status: STATUSES[Math.floor(r() * STATUSES.length)],
    capacityKw: 50 + Math.round(r() * 5000),
    storageCapacityKwh: i % 3 === 0 ? Math.round(r() * 8000) : undefined,
    location: { lat: 36 + r() * 34, lon: -10 + r() * 50, country: 'EU' },
    timezone: 'Europe/Berlin',
    telemetryIntervalSeconds: 60,
    tariff: { currency: 'EUR', importPricePerKwh: 0.2, exportPricePerKwh: 0.08 },
    tags: ['bench', TYPES[i % TYPES.length]],
  }));
}

/** Bulk load straight into the tables (one statement), with the columns derived from each document as the store does. */
async function load(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const docs = JSON.stringify(fleet());
    await c.query(
      `INSERT INTO nodes (node_id, type, status, capacity_kw, storage_capacity_kwh, lat, lon, timezone, telemetry_interval_seconds, doc)
       SELECT d->>'nodeId', d->>'type', d->>'status', (d->>'capacityKw')::float8, (d->>'storageCapacityKwh')::float8,
              (d->'location'->>'lat')::float8, (d->'location'->>'lon')::float8, d->>'timezone', (d->>'telemetryIntervalSeconds')::int, d
       FROM jsonb_array_elements($1::jsonb) d`,
      [docs],
    );
    await c.query(`INSERT INTO node_history (node_id, version, patch, doc) SELECT node_id, 1, NULL, doc FROM nodes`);
    await c.query('ANALYZE nodes');
  } finally {
    await c.end();
  }
}

async function planUsesIndex(url: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const { text, values } = nearbyStatement({ lat: 50, lon: 8, radiusKm: NEARBY_RADIUS_KM, box: boundingBox(50, 8, NEARBY_RADIUS_KM), limit: 100 });
    const { rows } = await c.query<Record<string, string>>(`EXPLAIN ${text}`, values);
    return rows.some((r) => r['QUERY PLAN'].includes('nodes_lat_lon'));
  } finally {
    await c.end();
  }
}

export const section: BenchSection = {
  name: 'metadata',
  async run(ctx) {
    const url = await ctx.freshDatabase();
    let t0 = performance.now();
    await load(url);
    ctx.report('metadata', `bulk load of ${FLEET} nodes (SQL, not HTTP)`, (performance.now() - t0) / 1000, 's');
    ctx.report('metadata', 'nearby plan uses the (lat, lon) index', (await planUsesIndex(url)) ? 1 : 0, 'bool', '1 = Index/Bitmap scan on nodes_lat_lon');

    const svc = await startBenchServer(url, { name: 'metadata', apiKey: KEY });
    try {
      const call = async (p: string) => (await svc.get(p)).body;

      const r = rng(11);
      const nodeUrl = () => `/api/metadata/node-${String(Math.floor(r() * FLEET)).padStart(5, '0')}`;
      const nearbyUrl = () => `/api/nodes/nearby?lat=${(38 + r() * 30).toFixed(4)}&lon=${(-8 + r() * 46).toFixed(4)}&radiusKm=${NEARBY_RADIUS_KM}`;
      // Warm-up: connections, JIT, the PostgreSQL buffer cache and the time-zone catalog.
      for (let i = 0; i < 200; i++) await call(i % 2 ? nodeUrl() : nearbyUrl());

      const getP50: number[] = [];
      const getP99: number[] = [];
      const nearP50: number[] = [];
      const nearP99: number[] = [];
      let found = 0;
      for (let run = 0; run < ctx.runs; run++) {
        const g = await latencies(GETS_PER_RUN, () => call(nodeUrl()));
        getP50.push(percentile(g, 50));
        getP99.push(percentile(g, 99));
        t0 = performance.now();
        const n = await latencies(NEARBY_PER_RUN, async () => {
          found += (JSON.parse(await call(nearbyUrl())) as { items: unknown[] }).items.length;
        });
        nearP50.push(percentile(n, 50));
        nearP99.push(percentile(n, 99));
      }
      const note = `${FLEET} nodes, median of ${ctx.runs} runs`;
      ctx.report('metadata', 'GET /api/metadata/:nodeId p50', median(getP50), 'ms', `${GETS_PER_RUN} sequential requests per run, ${note}`);
      ctx.report('metadata', 'GET /api/metadata/:nodeId p99', median(getP99), 'ms', note);
      ctx.report('metadata', `nearby (${NEARBY_RADIUS_KM} km) p50`, median(nearP50), 'ms', `${NEARBY_PER_RUN} requests per run, ${note}`);
      ctx.report('metadata', `nearby (${NEARBY_RADIUS_KM} km) p99`, median(nearP99), 'ms', note);
      ctx.report('metadata', 'nearby nodes per answer (mean)', found / (NEARBY_PER_RUN * ctx.runs), 'nodes');
    } finally {
      await svc.close();
    }
  },
};
