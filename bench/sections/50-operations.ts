/**
 * Retention under load: time to archive (gzip CSV + manifest + verify) and drop a telemetry
 * partition of 1,000,000 readings while ingestion runs over HTTP, and ingestion throughput and
 * worst latency during it versus without it. Median over ctx.runs runs (the partition is
 * reloaded before each run).
 */
import pg from 'pg';
import { OPERATIONS_JOBS } from '../../src/operations/index.js';
import { median, percentile, startBenchServer, type BenchSection } from '../harness.js';

const ROWS_NODES = 1000;
const ROWS_PER_NODE = 1000; // 1,000,000 readings in one day's partition
const CLIENTS = 8;
const BATCH = 100;
const BASELINE_MS = 10_000;
const KEY = 'bench-operations-key-0001';
const DAY = 86_400_000;

async function loadOldPartition(url: string, dayMs: number): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('SELECT ensure_telemetry_partition($1::date)', [new Date(dayMs).toISOString().slice(0, 10)]);
    await c.query(
      `INSERT INTO telemetry (node_id, ts, received_at, power_kw, voltage_v, frequency_hz, health_status, quality)
       SELECT 'node-' || n, $1::timestamptz + s * interval '86 seconds', $1::timestamptz + s * interval '86 seconds' + interval '2 seconds',
              round((100 * sin(n + s / 50.0))::numeric, 3), 400 + (s % 7), 50 + (s % 5) / 100.0, 'ok', 'measured'
         FROM generate_series(0, $2::int - 1) AS n, generate_series(0, $3::int - 1) AS s`,
      [new Date(dayMs), ROWS_NODES, ROWS_PER_NODE],
    );
    await c.query('ANALYZE telemetry');
  } finally {
    await c.end();
  }
}

interface IngestStats {
  readings: number;
  seconds: number;
  latencies: number[];
  errors: number;
}

/** CLIENTS clients each sending sync batches of BATCH readings until `until()` is true. */
async function ingest(base: string, until: () => boolean, clock: { t: number }): Promise<IngestStats> {
  const t0 = performance.now();
  const stats: IngestStats = { readings: 0, seconds: 0, latencies: [], errors: 0 };
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      while (!until()) {
        const readings = Array.from({ length: BATCH }, (_, i) => ({ nodeId: `live-${c}-${i}`, timestamp: clock.t, powerKw: i }));
        clock.t += 1;
        const s = performance.now();
        const r = await fetch(`${base}/api/telemetry/batch`, {
          method: 'POST',
          headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ readings }),
        });
        await r.arrayBuffer();
        stats.latencies.push(performance.now() - s);
        if (r.status === 200) stats.readings += BATCH;
        else stats.errors++;
      }
    }),
  );
  stats.seconds = (performance.now() - t0) / 1000;
  return stats;
}

export const section: BenchSection = {
  name: 'operations',
  async run(ctx) {
    const url = await ctx.freshDatabase();
    const svc = await startBenchServer(url, { name: 'operations', apiKey: KEY, env: { UNKNOWN_NODES: 'accept', RETENTION_TELEMETRY_DAYS: '30' } });
    try {
      const { baseUrl: base, container } = svc;
      const clock = { t: Date.now() - 10 * 60_000 };

      const retentionS: number[] = [];
      const baseRate: number[] = [];
      const duringRate: number[] = [];
      const baseP99: number[] = [];
      const duringP99: number[] = [];
      const duringMax: number[] = [];
      for (let run = 0; run < ctx.runs; run++) {
        const day = Math.floor(Date.now() / DAY) * DAY - (40 + run) * DAY;
        let t0 = performance.now();
        await loadOldPartition(url, day);
        if (run === 0) ctx.report('operations', `load ${ROWS_NODES * ROWS_PER_NODE} readings into one partition (SQL)`, (performance.now() - t0) / 1000, 's');

        // Warm-up, then ingestion alone.
        let end = performance.now() + 2000;
        await ingest(base, () => performance.now() > end, clock);
        end = performance.now() + BASELINE_MS;
        const alone = await ingest(base, () => performance.now() > end, clock);
        baseRate.push(alone.readings / alone.seconds);
        baseP99.push(percentile(alone.latencies, 99));

        // Ingestion while the retention job archives and drops the partition.
        let done = false;
        const during = ingest(base, () => done, clock);
        t0 = performance.now();
        const status = await container.jobs.runNow(OPERATIONS_JOBS.telemetryRetention);
        retentionS.push((performance.now() - t0) / 1000);
        done = true;
        const busy = await during;
        if (status.outcome !== 'ok') throw new Error(`retention failed: ${status.error}`);
        const dropped = (status.details as { rows?: number }).rows;
        if (dropped !== ROWS_NODES * ROWS_PER_NODE) throw new Error(`retention archived ${dropped} rows`);
        duringRate.push(busy.readings / busy.seconds);
        duringP99.push(percentile(busy.latencies, 99));
        duringMax.push(Math.max(...busy.latencies));
        if (alone.errors || busy.errors) throw new Error(`ingestion errors: ${alone.errors} alone, ${busy.errors} during retention`);
      }
      const note = `median of ${ctx.runs} runs; ${CLIENTS} clients, sync batches of ${BATCH}`;
      ctx.report('operations', 'archive (gzip CSV, verified) + drop of a 1,000,000-reading partition during ingestion', median(retentionS), 's', note);
      ctx.report('operations', 'ingestion throughput alone', median(baseRate), 'readings/s', note);
      ctx.report('operations', 'ingestion throughput during archive + drop', median(duringRate), 'readings/s', note);
      ctx.report('operations', 'ingestion batch p99 alone', median(baseP99), 'ms', note);
      ctx.report('operations', 'ingestion batch p99 during archive + drop', median(duringP99), 'ms', note);
      ctx.report('operations', 'ingestion batch worst latency during archive + drop', median(duringMax), 'ms', note);
    } finally {
      await svc.close();
    }
  },
};
