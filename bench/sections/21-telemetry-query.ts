/**
 * Historical query latency over real HTTP (listening socket, keep-alive fetch), on deterministic
 * data written straight into the tables and rolled up by the refresher:
 *   - hourly buckets over 30 days of 1-minute readings of one node (bar: p50 ≤ 15 ms),
 *   - daily buckets in Europe/Berlin over 365 days of 5-minute readings (bar: p50 ≤ 25 ms),
 * and a check that the numbers served from rollups equal a computation over the raw readings.
 */
import pg from 'pg';
import { intervalPeriods } from '../../src/telemetry/buckets.js';
import { accumulate, mergeRanges } from '../../src/telemetry/rollup-compute.js';
import { POWER } from '../../src/telemetry/rollup-fields.js';
import { loadReadings } from '../../src/telemetry/rollup-store.js';
import { roundSig } from '../../src/telemetry/query-engine.js';
import { latencies, median, percentile, startBenchServer, type BenchSection } from '../harness.js';

const KEY = 'bench-query-key-0001';
const END = Date.parse('2026-11-01T00:00:00Z');
const DAY = 86_400_000;
const QUERIES_PER_RUN = 100;

interface Series {
  nodeId: string;
  tz: string;
  intervalS: number;
  days: number;
}

const SERIES: Series[] = [
  { nodeId: 'bench-q-1m', tz: 'UTC', intervalS: 60, days: 30 },
  { nodeId: 'bench-q-5m', tz: 'Europe/Berlin', intervalS: 300, days: 366 },
  // Neighbours, so the rollup tables hold more than the queried node.
  ...Array.from({ length: 6 }, (_, i) => ({ nodeId: `bench-q-other-${i}`, tz: 'Europe/Berlin', intervalS: 60, days: 30 })),
];

/** Deterministic readings generated in SQL (a daily sine, a slower wave, hashed noise, a fault now and then), with dirty marks. */
async function load(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  let rows = 0;
  try {
    const maxDays = Math.max(...SERIES.map((s) => s.days));
    await c.query(`SELECT ensure_telemetry_partition(d::date) FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 day') d`, [new Date(END - maxDays * DAY).toISOString(), new Date(END).toISOString()]);
    for (const s of SERIES) {
      await c.query(
        `INSERT INTO nodes (node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds, doc)
         VALUES ($1, 'solar', 'active', 1000, $2, $3, jsonb_build_object('nodeId', $1::text))`,
        [s.nodeId, s.tz, s.intervalS],
      );
      const r = await c.query(
        `INSERT INTO telemetry (node_id, ts, power_kw, voltage_v, health_status)
         SELECT $1, ts,
                round((500 * sin(2 * pi() * extract(epoch FROM ts) / 86400) + 120 * sin(extract(epoch FROM ts) / 3700)
                       + (abs(hashtext($1 || ts::text)) % 1000) / 10.0)::numeric, 1)::float8,
                230 + (abs(hashtext(ts::text)) % 100) / 50.0,
                CASE WHEN abs(hashtext($1 || ts::text)) % 97 = 0 THEN 'fault' ELSE 'ok' END
         FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 second', make_interval(secs => $4)) ts`,
        [s.nodeId, new Date(END - s.days * DAY).toISOString(), new Date(END).toISOString(), s.intervalS],
      );
      rows += r.rowCount ?? 0;
      await c.query(
        `INSERT INTO telemetry_dirty_buckets (node_id, bucket_start)
         SELECT $1, b FROM generate_series($2::timestamptz, $3::timestamptz + make_interval(secs => $4 * 3), interval '15 minutes') b
         ON CONFLICT DO NOTHING`,
        [s.nodeId, new Date(END - s.days * DAY).toISOString(), new Date(END).toISOString(), s.intervalS],
      );
    }
    await c.query('ANALYZE telemetry');
  } finally {
    await c.end();
  }
  return rows;
}

interface Answer {
  buckets: { start: string; count: number; powerKw: Record<string, number | null> }[];
}

/** Largest relative difference between the served buckets and `accumulate` over the raw readings (0 = identical). */
async function compareWithRaw(db: pg.Pool, s: Series, interval: string, tz: string, from: number, to: number, answer: Answer): Promise<{ maxRel: number; buckets: number }> {
  const capMs = 3 * s.intervalS * 1000;
  const periods = intervalPeriods(interval, tz, from, to).map((p) => ({ start: Math.max(p.start, from), end: Math.min(p.end, to) }));
  const readings = await loadReadings(db, s.nodeId, [POWER], mergeRanges([{ lo: from - capMs, hi: to }], 0));
  const parts = accumulate(readings, periods, capMs, 0);
  let maxRel = 0;
  const rel = (a: number | null, b: number | null) => {
    if (a === null || b === null) return a === b ? 0 : Infinity;
    return Math.abs(a - b) / Math.max(1, Math.abs(b));
  };
  if (answer.buckets.length !== periods.length) return { maxRel: Infinity, buckets: answer.buckets.length };
  answer.buckets.forEach((b, i) => {
    const a = parts[i].fields[0];
    // The service rounds to 12 significant digits (summation order differs between tiers): so does the reference.
    const ref: Record<string, number | null> = {
      avg: a.n ? roundSig(a.sum / a.n) : null,
      min: a.n ? a.min : null,
      max: a.n ? a.max : null,
      twa: a.held ? roundSig(a.integral / a.held) : null,
      count: a.n,
    };
    for (const k of Object.keys(ref)) maxRel = Math.max(maxRel, rel(b.powerKw[k], ref[k]));
    if (b.count !== a.n) maxRel = Infinity;
  });
  return { maxRel, buckets: periods.length };
}

export const section: BenchSection = {
  name: 'telemetry-query',
  async run(ctx) {
    const url = await ctx.freshDatabase();
    let t0 = performance.now();
    const rows = await load(url);
    ctx.report('telemetry-query', `load ${rows} readings (SQL, not HTTP)`, (performance.now() - t0) / 1000, 's');

    const svc = await startBenchServer(url, {
      name: 'query',
      apiKey: KEY,
      // The data ends on a fixed date: keep retention from dropping it during the run.
      // Rollups are built right after the load (no settle time): the figures are of queries on them.
      env: { RETENTION_TELEMETRY_DAYS: '36500', RETENTION_ROLLUP_DAYS: '36500', ROLLUP_SETTLE_SECONDS: '0' },
    });
    try {
      const { container } = svc;
      t0 = performance.now();
      let buckets = 0;
      for (;;) {
        const st = await container.jobs.runNow('rollup-refresh');
        if (st.outcome !== 'ok') throw new Error(`refresh failed: ${st.error ?? st.outcome}`);
        buckets += Number(st.details?.buckets ?? 0);
        if (!st.details?.more) break;
      }
      const refreshS = (performance.now() - t0) / 1000;
      ctx.report('telemetry-query', 'rollup refresh of every dirty 15-min bucket', refreshS, 's', `${buckets} buckets, ${Math.round(buckets / refreshS)} buckets/s`);
      await container.db.pool.query('ANALYZE telemetry_rollup_15m; ANALYZE telemetry_rollup_1h; ANALYZE telemetry_rollup_2h; ANALYZE telemetry_rollup_4h; ANALYZE telemetry_rollup_8h; ANALYZE telemetry_rollup_1d');
      // The marks the refresh just deleted, vacuumed as autovacuum does within its next round
      // (migration 009); their dead index entries would otherwise slow every query's mark lookup.
      await container.db.pool.query('VACUUM ANALYZE telemetry_dirty_buckets');

      const call = async (p: string) => {
        const { body, headers } = await svc.get(p);
        return { body, tier: headers.get('x-rollup-tier') };
      };

      const hourly = SERIES[0];
      const hFrom = END - 30 * DAY;
      const hourlyUrl = `/api/telemetry/${hourly.nodeId}/historical?from=${new Date(hFrom).toISOString()}&to=${new Date(END).toISOString()}&interval=1h&agg=avg,min,max,twa,count`;
      const daily = SERIES[1];
      // 365 local days of Europe/Berlin ending at the last local midnight of the data.
      const dTo = Date.parse('2026-11-01T00:00:00+01:00');
      const dFrom = Date.parse('2025-11-01T00:00:00+01:00');
      const dailyUrl = `/api/telemetry/${daily.nodeId}/historical?from=${new Date(dFrom).toISOString()}&to=${new Date(dTo).toISOString()}&interval=1d&tz=Europe/Berlin&agg=avg,min,max,twa,count`;

      for (let i = 0; i < 30; i++) await call(i % 2 ? hourlyUrl : dailyUrl);
      const h = await call(hourlyUrl);
      const d = await call(dailyUrl);
      const hc = await compareWithRaw(container.db.pool, hourly, '1h', 'UTC', hFrom, END, JSON.parse(h.body) as Answer);
      const dc = await compareWithRaw(container.db.pool, daily, '1d', 'Europe/Berlin', dFrom, dTo, JSON.parse(d.body) as Answer);
      console.log(`  telemetry-query | rollups vs raw: hourly ${hc.buckets} buckets from tier ${h.tier}, max relative difference ${hc.maxRel}; daily ${dc.buckets} buckets from tier ${d.tier}, max relative difference ${dc.maxRel}`);
      ctx.report('telemetry-query', 'hourly/30 d: max relative difference rollups vs raw', hc.maxRel, 'ratio', `tier ${h.tier}, ${hc.buckets} buckets, avg/min/max/twa/count`);
      ctx.report('telemetry-query', 'daily Berlin/365 d: max relative difference rollups vs raw', dc.maxRel, 'ratio', `tier ${d.tier}, ${dc.buckets} buckets`);

      const hP50: number[] = [];
      const dP50: number[] = [];
      const hP99: number[] = [];
      const dP99: number[] = [];
      for (let run = 0; run < ctx.runs; run++) {
        const a = await latencies(QUERIES_PER_RUN, () => call(hourlyUrl));
        hP50.push(percentile(a, 50));
        hP99.push(percentile(a, 99));
        const b = await latencies(QUERIES_PER_RUN, () => call(dailyUrl));
        dP50.push(percentile(b, 50));
        dP99.push(percentile(b, 99));
      }
      const note = `${QUERIES_PER_RUN} sequential requests per run, median of ${ctx.runs} runs`;
      ctx.report('telemetry-query', 'hourly buckets over 30 days of 1-min data p50', median(hP50), 'ms', `bar ≤ 15 ms; ${note}`);
      ctx.report('telemetry-query', 'hourly buckets over 30 days of 1-min data p99', median(hP99), 'ms', note);
      ctx.report('telemetry-query', 'daily buckets, Europe/Berlin, 365 days of 5-min data p50', median(dP50), 'ms', `bar ≤ 25 ms; ${note}`);
      ctx.report('telemetry-query', 'daily buckets, Europe/Berlin, 365 days of 5-min data p99', median(dP99), 'ms', note);
    } finally {
      await svc.close();
    }
  },
};
