/**
 * Analytics figures over real HTTP: daily analytics for one node over 365 days (1-minute
 * readings, rolled up), and portfolio analytics over 30 days for 1,000 nodes (15-minute
 * readings, rolled up, settlements in the log). Each figure cold (the analytics cache emptied
 * before every request) and warm (the answer cached; the freshness fingerprint still read).
 *   BENCH_ANALYTICS_NODES  fleet size (default 1000)
 */
import type { Container } from '../../src/container.js';
import { latencies, median, startBenchServer, type BenchContext, type BenchSection } from '../harness.js';

const KEY = 'bench-analytics-admin-key';
const TYPES = ['solar', 'wind', 'battery', 'data_center', 'ev_charging', 'chp', 'hydro', 'demand_response', 'other'];
const DAY = 86_400_000;
// Closed periods that end before today, so the figures do not depend on the date of the run.
const TODAY = Math.floor(Date.now() / DAY) * DAY;
const YEAR_FROM = TODAY - 367 * DAY;
const MONTH_FROM = TODAY - 31 * DAY;
const iso = (ms: number) => new Date(ms).toISOString();
const date = (ms: number) => iso(ms).slice(0, 10);

/** Readings straight into `telemetry` with every 15-minute bucket they hold into marked, as ingestion marks them. */
async function loadReadings(c: Container, nodeIds: string[], from: number, to: number, stepSeconds: number): Promise<void> {
  const q = c.db.pool;
  // One partition per statement: a statement creating many holds their locks together and can deadlock with the partitions job.
  for (let d = Math.floor(from / DAY) * DAY; d < to; d += DAY) await q.query('SELECT ensure_telemetry_partition($1::date)', [date(d)]);
  for (let d = from; d < to; d += 10 * DAY) {
    const hi = Math.min(to, d + 10 * DAY);
    await q.query(
      `INSERT INTO telemetry (node_id, ts, received_at, power_kw, health_status, quality)
       SELECT n, ts, ts, round((nodes.capacity_kw * (0.45 + 0.4 * sin(extract(epoch FROM ts) / 7200.0 + k) + 0.1 * sin(extract(epoch FROM ts) / 97.0)))::numeric, 2)::float8,
              CASE WHEN (extract(epoch FROM ts)::bigint / 60 + k) % 997 = 0 THEN 'fault' ELSE 'ok' END, 'measured'
       FROM unnest($1::text[]) WITH ORDINALITY AS u(n, k)
       JOIN nodes ON nodes.node_id = u.n
       CROSS JOIN generate_series($2::timestamptz, $3::timestamptz - interval '1 second', make_interval(secs => $4::int)) AS ts
       WHERE (extract(epoch FROM ts)::bigint / $4::bigint + k) % 211 <> 0`,
      [nodeIds, iso(d), iso(hi), stepSeconds],
    );
  }
  await q.query(
    `INSERT INTO telemetry_dirty_buckets (node_id, bucket_start)
     SELECT n, b FROM unnest($1::text[]) AS n, generate_series($2::timestamptz, $3::timestamptz, interval '15 minutes') AS b
     ON CONFLICT DO NOTHING`,
    [nodeIds, iso(from), iso(to + 3 * stepSeconds * 1000)],
  );
}

/** Runs the service's own refresher job (it holds the job lock, so the scheduled runs cannot collide) until no mark is left. */
async function refreshAll(c: Container): Promise<void> {
  for (;;) {
    const status = await c.jobs.runNow('rollup-refresh');
    if (status.outcome === 'error') throw new Error(`rollup-refresh failed: ${JSON.stringify(status)}`);
    const { rows } = await c.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry_dirty_buckets');
    if (rows[0].n === 0) return;
  }
}

async function timed(ctx: BenchContext, base: string, url: string, cold: boolean, c: Container): Promise<number[]> {
  const n = Math.max(5, ctx.runs * 3);
  return latencies(n, async () => {
    if (cold) await c.cache.delPrefix('analytics:');
    const r = await fetch(`${base}${url}`, { headers: { authorization: `Bearer ${KEY}` } });
    if (r.status !== 200) throw new Error(`${url}: ${r.status} ${await r.text()}`);
    await r.arrayBuffer();
  });
}

export const section: BenchSection = {
  name: 'analytics',
  async run(ctx) {
    const nodes = Number(process.env.BENCH_ANALYTICS_NODES ?? 1000);
    const url = await ctx.freshDatabase();
    const svc = await startBenchServer(url, { name: 'an', apiKey: KEY, redisUrl: ctx.redisUrl, env: { RETENTION_TELEMETRY_DAYS: '3650', RETENTION_ROLLUP_DAYS: '3650', ROLLUP_SETTLE_SECONDS: '0' } });
    try {
      const c = svc.container;
      // One node, a year of 1-minute readings, in New York (local days are off the UTC rollup grid).
      await c.db.pool.query(
        `INSERT INTO nodes (node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds, doc)
         VALUES ('year-node', 'battery', 'active', 500, 'America/New_York', 60, '{"nodeId":"year-node"}')`,
      );
      const ids = Array.from({ length: nodes }, (_, i) => `fleet-${String(i).padStart(4, '0')}`);
      await c.db.pool.query(
        `INSERT INTO nodes (node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds, doc)
         SELECT id, ($2::text[])[(k - 1) % 9 + 1], CASE WHEN k % 50 = 0 THEN 'decommissioned' ELSE 'active' END, 50 + (k * 37) % 5000, 'UTC', 900, jsonb_build_object('nodeId', id)
         FROM unnest($1::text[]) WITH ORDINALITY AS u(id, k)`,
        [ids, TYPES],
      );
      await c.nodes.reloadAll();
      let t0 = performance.now();
      await loadReadings(c, ['year-node'], YEAR_FROM, TODAY, 60);
      await loadReadings(c, ids, MONTH_FROM, TODAY, 900);
      await refreshAll(c);
      // A running system has statistics and vacuumed tables (autovacuum); a freshly bulk-loaded one
      // must be told, or the dead marks the refresher left behind and missing statistics dominate.
      await c.db.pool.query('VACUUM ANALYZE');
      console.log(`   seeded and rolled up in ${Math.round((performance.now() - t0) / 1000)} s`);
      // One settlement per node every 3 days and one per day for the year node, through the log's own appends.
      t0 = performance.now();
      const bodies: Record<string, unknown>[] = [];
      for (let d = MONTH_FROM; d < TODAY; d += 3 * DAY) for (const [i, id] of ids.entries()) bodies.push({ nodeId: id, type: 'settlement', timestamp: iso(d + (i % 24) * 3_600_000), amountEur: ((i % 7) - 2) * 10.5, status: 'settled' });
      for (let d = YEAR_FROM; d < TODAY; d += DAY) bodies.push({ nodeId: 'year-node', type: 'settlement', timestamp: iso(d + 15 * 3_600_000), amountEur: 25, status: 'settled' });
      for (let i = 0; i < bodies.length; i += 200) {
        await Promise.all(
          bodies.slice(i, i + 200).map(async (b) => {
            const r = await fetch(`${svc.baseUrl}/api/transactions`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(b) });
            if (r.status !== 201) throw new Error(`transaction: ${r.status} ${await r.text()}`);
          }),
        );
      }
      console.log(`   ${bodies.length} settlements appended in ${Math.round((performance.now() - t0) / 1000)} s`);

      const daily = `/api/analytics/year-node/daily?from=${date(YEAR_FROM + DAY)}&to=${date(TODAY - DAY)}`;
      const portfolio = `/api/analytics/portfolio?from=${date(TODAY - 30 * DAY)}&to=${date(TODAY)}`;
      const note = `cache: ${c.cache.kind}`;
      ctx.report('analytics', 'GET daily, 1 node × 365 days p50, cold', median(await timed(ctx, svc.baseUrl, daily, true, c)), 'ms', note);
      ctx.report('analytics', 'GET daily, 1 node × 365 days p50, warm', median(await timed(ctx, svc.baseUrl, daily, false, c)), 'ms', note);
      ctx.report('analytics', `GET portfolio, ${nodes} nodes × 30 days p50, cold`, median(await timed(ctx, svc.baseUrl, portfolio, true, c)), 'ms', note);
      ctx.report('analytics', `GET portfolio, ${nodes} nodes × 30 days p50, warm`, median(await timed(ctx, svc.baseUrl, portfolio, false, c)), 'ms', note);
      const bench = `/api/analytics/fleet-0001/benchmarks?from=${date(TODAY - 30 * DAY)}&to=${date(TODAY - DAY)}`;
      ctx.report('analytics', `GET benchmarks, peer group of ~${Math.round(nodes / 9)} × 30 days p50, cold`, median(await timed(ctx, svc.baseUrl, bench, true, c)), 'ms', note);
    } finally {
      await svc.close();
    }
  },
};
