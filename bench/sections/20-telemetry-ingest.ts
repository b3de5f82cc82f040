/**
 * Telemetry ingestion figures, each on a fresh database with a deterministic fleet:
 *  (a) raw ceiling: the same rows written straight into telemetry by plain SQL with the same
 *      duplicate semantics (COPY into a staging table + INSERT … ON CONFLICT DO UPDATE WHERE
 *      distinct, sorted), 2 connections, 10,000 rows a transaction;
 *  (a′) diagnostic: plain SQL doing what the service's writer does in (b), in 2,000-row
 *      transactions (its flush size there): the rows, all new, COPYed straight into telemetry
 *      (no conflict handling), telemetry_latest and the invalidation-log row;
 *  (a″) diagnostic: plain COPY straight into telemetry, 2 connections, 10,000 rows a transaction,
 *      no conflict handling: what writing rows known to be new costs (the service's direct path
 *      for such rows; it falls back to the staged upsert when a key exists);
 *  (b) sync HTTP batch ingestion, 1,000 readings a request, 8 concurrent keep-alive clients;
 *  (c) single-reading ingestion, 32 concurrent clients, timed after 2,000 warm-up readings;
 *      the clients of (b) and (c) run in a child process, outside the service's process, as a
 *      lean raw-socket HTTP/1.1 client (as wrk is) so they take little of the shared machine;
 *  (d) GET latest p50 / p99.
 * Each phase starts from a settled database (see the run loop). Prints medians of ctx.runs runs,
 * the ratios (b)/(a) and (b)/(a′) of each run, and per phase the CPU time per reading of the
 * service, the load generator and the rest of the machine.
 */
import { spawn } from 'node:child_process';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import type { RollupRefresher } from '../../src/telemetry/rollup-refresher.js';
import { expandInvalidationLog } from '../../src/telemetry/rollup-store.js';
import { invalidationEntry, latestSql, logInsertSql } from '../../src/telemetry/writer.js';
import { cpuMeter, median, percentile, rng, startBenchServer, type BenchServer, type BenchContext, type BenchSection } from '../harness.js';

const KEY = 'bench-ingest-admin-key';
const NODES = 1000;
/** Readings per node for (a) and (b): 1,000 nodes × 300 one-minute readings = 300,000 rows. */
const PER_NODE = 300;
const BATCH = 1000;
const BATCH_CLIENTS = 8;
const SINGLE_CLIENTS = 32;
const SINGLE_READINGS = 20_000;
/** Single readings sent before (c) is timed, so (c) measures the route once compiled, as a steady service runs. */
const WARMUP_SINGLES = 2000;
const LATEST_REQUESTS = 2000;

interface Reading {
  nodeId: string;
  timestamp: string;
  powerKw: number;
  voltageV: number;
  frequencyHz: number;
  stateOfChargePct: number;
  healthStatus: string;
  quality: string;
}

const nodeId = (i: number) => `bench-node-${String(i).padStart(4, '0')}`;

/** The fleet's readings in arrival order: time-major (each minute, every node reports). */
function fleetReadings(start: number, perNode: number, seed: number): Reading[] {
  const rand = rng(seed);
  const out: Reading[] = [];
  for (let k = 0; k < perNode; k++) {
    const ts = new Date(start + k * 60_000).toISOString();
    for (let n = 0; n < NODES; n++) {
      out.push({
        nodeId: nodeId(n),
        timestamp: ts,
        powerKw: Math.round((rand() * 2000 - 1000) * 100) / 100,
        voltageV: Math.round((398 + rand() * 4) * 10) / 10,
        frequencyHz: Math.round((49.95 + rand() * 0.1) * 1000) / 1000,
        stateOfChargePct: Math.round(rand() * 1000) / 10,
        healthStatus: 'ok',
        quality: 'measured',
      });
    }
  }
  return out;
}

async function seedNodes(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(
      `INSERT INTO nodes (node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds, doc)
       SELECT 'bench-node-' || lpad(i::text, 4, '0'), 'battery', 'active', 1000, 'UTC', 60, '{}'::jsonb FROM generate_series(0, $1 - 1) i`,
      [NODES],
    );
  } finally {
    await c.end();
  }
}

const COLS = 'node_id, ts, received_at, power_kw, voltage_v, frequency_hz, state_of_charge_pct, health_status, quality';
const VALUE_COLS = ['power_kw', 'voltage_v', 'frequency_hz', 'state_of_charge_pct', 'health_status', 'quality'];
const RAW_SQL = `INSERT INTO telemetry AS t (${COLS}) SELECT ${COLS} FROM raw_stage ORDER BY node_id, ts
  ON CONFLICT (node_id, ts) DO UPDATE SET received_at = EXCLUDED.received_at, ${VALUE_COLS.map((c) => `${c} = EXCLUDED.${c}`).join(', ')}
  WHERE (${VALUE_COLS.map((c) => `t.${c}`).join(', ')}) IS DISTINCT FROM (${VALUE_COLS.map((c) => `EXCLUDED.${c}`).join(', ')})`;

/** (a): plain SQL, 2 connections (nodes split between them), 10,000 rows a transaction. */
/**
 * (a′), a diagnostic beside (a): plain SQL doing the work of the service's writer in (b), in
 * transactions of its flush size there (~2,000 rows): the rows COPYed straight into telemetry
 * without conflict handling, as the service's direct path writes rows newer than their node's
 * latest (here in text format; the service's COPY is binary), and the same transaction keeps
 * `telemetry_latest` with the writer's own statement (newest reading per node, sent as a jsonb
 * parameter prepared in the client as the service prepares it) and inserts the write's row of
 * `telemetry_invalidation_log` (its dirty 15-minute buckets of [ts, ts + 3 min), text prepared in
 * the client).
 * (b)/(a′) is then the share of the database-only figure the HTTP path keeps once the bookkeeping
 * the design needs is paid on both sides.
 */
/** The service writer's statement for latest values, from candidates sent as a jsonb parameter. */
const LATEST_SQL = latestSql('$1');

/** Latest candidates of a transaction's rows as the writer sends them: per node its newest row, [nodeId, ts, receivedAt, reading]. */
function latestParam(rows: Reading[], recv: string): string {
  const newest = new Map<string, Reading>();
  for (const r of rows) {
    const n = newest.get(r.nodeId);
    if (!n || r.timestamp > n.timestamp) newest.set(r.nodeId, r);
  }
  return JSON.stringify([...newest.values()].sort((x, y) => (x.nodeId < y.nodeId ? -1 : 1)).map((r) => [r.nodeId, r.timestamp, recv, r]));
}

/** The writer's invalidation-log row of a transaction (migration 012), its text prepared in the client by the writer's own code. */
const LOG_SQL = logInsertSql('$1', '$2');

/** The invalidation-log entry of a transaction's rows (their buckets of [ts, ts + 3 × 60 s)), as the writer builds it. */
function logRow(rows: Reading[]): [string, string] {
  const holding = rows.map((r) => ({ nodeId: r.nodeId, ts: Date.parse(r.timestamp), intervalS: 60 }));
  holding.sort((x, y) => (x.nodeId < y.nodeId ? -1 : x.nodeId > y.nodeId ? 1 : x.ts - y.ts));
  const { ranges, marks } = invalidationEntry(holding);
  return [ranges, marks];
}

async function rawCeiling(url: string, readings: Reading[], opts: { rowsPerTx: number; bookkeeping: boolean; direct?: boolean } = { rowsPerTx: 10_000, bookkeeping: false }): Promise<{ rate: number; cpu: string }> {
  const days = new Set(readings.map((r) => r.timestamp.slice(0, 10)));
  const setup = new pg.Client({ connectionString: url });
  await setup.connect();
  for (const d of days) await setup.query('SELECT ensure_telemetry_partition($1::date)', [d]);
  await setup.end();
  const recv = new Date().toISOString();
  // Text prepared before timing: the figure is the database's, not the serialiser's.
  const chunks: string[][] = [[], []];
  const logs: [string, string][][] = [[], []];
  const latests: string[][] = [[], []];
  const parts: string[][] = [[], []];
  const rowsOf: Reading[][] = [[], []];
  const close = (w: number) => {
    chunks[w].push(parts[w].join(''));
    if (opts.bookkeeping) {
      logs[w].push(logRow(rowsOf[w]));
      latests[w].push(latestParam(rowsOf[w], recv));
    }
    parts[w] = [];
    rowsOf[w] = [];
  };
  for (const r of readings) {
    const w = Number(r.nodeId.slice(-4)) % 2;
    parts[w].push(`${r.nodeId}\t${r.timestamp}\t${recv}\t${r.powerKw}\t${r.voltageV}\t${r.frequencyHz}\t${r.stateOfChargePct}\t${r.healthStatus}\t${r.quality}\n`);
    rowsOf[w].push(r);
    if (parts[w].length === opts.rowsPerTx) close(w);
  }
  for (let w = 0; w < 2; w++) if (parts[w].length) close(w);
  const clients = await Promise.all(
    [0, 1].map(async () => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query(`CREATE TEMP TABLE raw_stage (node_id text, ts timestamptz, received_at timestamptz, power_kw float8, voltage_v float8, frequency_hz float8, state_of_charge_pct float8, health_status text, quality text) ON COMMIT DELETE ROWS`);
      return c;
    }),
  );
  const meter = cpuMeter();
  const t0 = performance.now();
  await Promise.all(
    clients.map(async (c, w) => {
      for (const [k, text] of chunks[w].entries()) {
        await c.query('BEGIN');
        await new Promise<void>((resolve, reject) => {
          const s = c.query(copyFrom(opts.direct ? `COPY telemetry (${COLS}) FROM STDIN` : `COPY raw_stage FROM STDIN`));
          s.on('error', reject);
          s.on('finish', resolve);
          s.end(text);
        });
        if (!opts.direct) await c.query(RAW_SQL);
        if (opts.bookkeeping) {
          await c.query(LATEST_SQL, [latests[w][k]]);
          await c.query(LOG_SQL, logs[w][k]);
        }
        await c.query('COMMIT');
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu = meter();
  await Promise.all(clients.map((c) => c.end()));
  return { rate: readings.length / seconds, cpu: cpuPerReading({ service: 0, client: cpu.processSeconds, others: cpu.othersSeconds }, readings.length) };
}

/** The service under test and its port (for the load generator's own HTTP client). */
type Service = BenchServer & { port: number };

async function startService(ctx: BenchContext, url: string): Promise<Service> {
  const server = await startBenchServer(url, { name: 'ingest', apiKey: KEY, redisUrl: ctx.redisUrl });
  return Object.assign(server, { port: Number(new URL(server.baseUrl).port) });
}

interface Job {
  path: string;
  body: string;
}

/**
 * The load generator for (b) and (c), run in a child process: `clients` keep-alive HTTP/1.1
 * connections take jobs from a shared list until it is empty, one request in flight per
 * connection. Clients live outside the service's process (as real clients do), so the service's
 * CPU time is its own. The client is written on raw sockets, as wrk is: requests are serialised
 * before timing and an answer is parsed only for its status, Content-Length and `stored`, so the
 * generator takes as little as it can of the machine it shares with the service and PostgreSQL.
 * Returns the seconds from first request to last answer, the sum of the answers' `stored`, and the
 * generator's own CPU seconds.
 */
const LOAD_CHILD = `
const net = require('node:net');
process.once('message', ({ port, key, jobs, clients, expect }) => {
  const requests = jobs.map((job) => {
    const body = Buffer.from(job.body);
    const head = 'POST ' + job.path + ' HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Bearer ' + key +
      '\\r\\nContent-Type: application/json\\r\\nContent-Length: ' + body.length + '\\r\\n\\r\\n';
    return Buffer.concat([Buffer.from(head), body]);
  });
  // One connection: send(buf) resolves with { status, body } of the next answer.
  function connection() {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.setNoDelay(true);
      let buf = Buffer.alloc(0);
      let waiting = null;
      socket.on('data', (d) => {
        buf = buf.length ? Buffer.concat([buf, d]) : d;
        const end = buf.indexOf('\\r\\n\\r\\n');
        if (end < 0 || !waiting) return;
        const head = buf.toString('latin1', 0, end);
        const m = /\\r\\ncontent-length: *(\\d+)/i.exec(head);
        if (!m) return waiting.reject(new Error('answer without Content-Length: ' + head));
        const total = end + 4 + Number(m[1]);
        if (buf.length < total) return;
        const w = waiting;
        waiting = null;
        const answer = { status: Number(head.slice(9, 12)), body: buf.toString('utf8', end + 4, total) };
        buf = buf.subarray(total);
        w.resolve(answer);
      });
      socket.on('error', (e) => (waiting ? waiting.reject(e) : reject(e)));
      socket.on('close', () => waiting && waiting.reject(new Error('connection closed')));
      socket.on('connect', () => resolve({
        send: (req) => new Promise((res, rej) => { waiting = { resolve: res, reject: rej }; socket.write(req); }),
        close: () => socket.destroy(),
      }));
    });
  }
  (async () => {
    const conns = await Promise.all(Array.from({ length: clients }, connection));
    let next = 0;
    let stored = 0;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(conns.map(async (conn) => {
      while (next < requests.length) {
        const r = await conn.send(requests[next++]);
        if (r.status !== expect) throw new Error('ingestion answered ' + r.status + ': ' + r.body.slice(0, 300));
        stored += JSON.parse(r.body).stored;
      }
    }));
    const seconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    for (const conn of conns) conn.close();
    process.send({ seconds, stored, cpuSeconds: (c.user + c.system) / 1e6 }, () => process.exit(0));
  })().catch((err) => process.send({ error: String(err && err.stack || err) }, () => process.exit(1)));
});
`;

interface LoadResult {
  seconds: number;
  stored: number;
  /** Core-seconds while the load ran: the service's process, the load generator, the rest (PostgreSQL). */
  cpu: { service: number; client: number; others: number };
}

async function runLoad(s: Service, jobs: Job[], clients: number, expect: number): Promise<LoadResult> {
  const child = spawn(process.execPath, ['-e', LOAD_CHILD], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const done = new Promise<{ seconds: number; stored: number; cpuSeconds: number; error?: string }>((resolve, reject) => {
      child.once('message', (m) => resolve(m as { seconds: number; stored: number; cpuSeconds: number; error?: string }));
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`load generator exited with ${code}`)));
    });
    const cpu = cpuMeter();
    child.send({ port: s.port, key: KEY, jobs, clients, expect });
    const m = await done;
    const split = cpu();
    if (m.error) throw new Error(m.error);
    return { seconds: m.seconds, stored: m.stored, cpu: { service: split.processSeconds, client: m.cpuSeconds, others: Math.max(0, split.othersSeconds - m.cpuSeconds) } };
  } finally {
    child.kill();
  }
}

async function httpBatches(s: Service, readings: Reading[]): Promise<{ rate: number; stored: number; cpu: string }> {
  const jobs: Job[] = [];
  for (let i = 0; i < readings.length; i += BATCH) jobs.push({ path: '/api/telemetry/batch', body: JSON.stringify({ readings: readings.slice(i, i + BATCH) }) });
  const { seconds, stored, cpu } = await runLoad(s, jobs, BATCH_CLIENTS, 200);
  return { rate: readings.length / seconds, stored, cpu: cpuPerReading(cpu, readings.length) };
}

/** CPU µs per reading: service process / load generator / the rest (PostgreSQL). */
function cpuPerReading(cpu: LoadResult['cpu'], n: number): string {
  const us = (v: number) => ((v * 1e6) / n).toFixed(1);
  return `cpu µs/reading service ${us(cpu.service)} client ${us(cpu.client)} db ${us(cpu.others)}`;
}

async function httpSingles(s: Service, readings: Reading[]): Promise<{ rate: number; cpu: string }> {
  const jobs = readings.map((r) => {
    const { nodeId: id, ...rest } = r;
    return { path: `/api/telemetry/${id}`, body: JSON.stringify(rest) };
  });
  const { seconds, stored, cpu } = await runLoad(s, jobs, SINGLE_CLIENTS, 201);
  if (stored !== readings.length) throw new Error(`single readings: stored ${stored} of ${readings.length}`);
  return { rate: readings.length / seconds, cpu: cpuPerReading(cpu, readings.length) };
}

/** Runs the rollup refresher until no dirty bucket is left; its time and the buckets it recomputed. */
async function refreshCatchUp(s: Service): Promise<{ seconds: number; buckets: number; cpu: string }> {
  const t0 = performance.now();
  const meter = cpuMeter();
  const pool = s.container.db.pool;
  const count = async () => (await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry_dirty_buckets')).rows[0].n;
  const logged = async () => (await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry_invalidation_log')).rows[0].n;
  // Direct writes log their buckets; they count as marks once expanded (as the refresher does first).
  await expandInvalidationLog(pool);
  const buckets = await count();
  // The service runs with the default settle time; the catch-up takes every mark, settled or not.
  const refresher = (s.container.domains.find((d) => 'refresher' in d) as unknown as { refresher: RollupRefresher }).refresher;
  for (let i = 0; i < 1000 && (await count()) + (await logged()) > 0; i++) await refresher.refreshOnce(undefined, { settleMs: 0 });
  const cpu = meter();
  return { seconds: (performance.now() - t0) / 1000, buckets, cpu: `cpu s: service ${cpu.processSeconds.toFixed(2)} db ${cpu.othersSeconds.toFixed(2)}` };
}

/** Group-commit flushes so far (count, readings, direct writes) from the service's own metrics. */
async function flushSizes(s: Service): Promise<{ count: number; sum: number; direct: number }> {
  const m = await s.container.metrics.registry.getSingleMetric('telemetry_flush_readings')?.get();
  const v = (name: string) => m?.values.find((x) => (x as { metricName?: string }).metricName === name)?.value ?? 0;
  const d = await s.container.metrics.registry.getSingleMetric('telemetry_direct_writes_total')?.get();
  return { count: v('telemetry_flush_readings_count'), sum: v('telemetry_flush_readings_sum'), direct: d?.values[0]?.value ?? 0 };
}

async function latestLatency(s: Service): Promise<number[]> {
  const rand = rng(99);
  const out: number[] = [];
  for (let i = 0; i < LATEST_REQUESTS; i++) {
    const id = nodeId(Math.floor(rand() * NODES));
    const t0 = performance.now();
    await s.get(`/api/telemetry/${id}/latest`);
    out.push(performance.now() - t0);
  }
  return out;
}

export const section: BenchSection = {
  name: 'telemetry-ingest',
  async run(ctx) {
    const S = 'telemetry-ingest';
    // Recent measurement times (inside retention), minute-aligned, the same every run.
    const start = Math.floor((Date.now() - 2 * 86_400_000) / 86_400_000) * 86_400_000;
    const readings = fleetReadings(start, PER_NODE, 42);
    const singles = fleetReadings(start + PER_NODE * 60_000, Math.ceil(SINGLE_READINGS / NODES), 7).slice(0, SINGLE_READINGS);
    // The warm-up's readings are older than (b)'s, so they do not move the latest values (c) moves.
    const warmup = fleetReadings(start - 60 * 60_000, Math.ceil(WARMUP_SINGLES / NODES), 8).slice(0, WARMUP_SINGLES);
    const raw: number[] = [];
    const rawPrime: number[] = [];
    const rawDirect: number[] = [];
    const ratioDirect: number[] = [];
    const ratioPrime: number[] = [];
    const batch: number[] = [];
    const ratio: number[] = [];
    const single: number[] = [];
    const p50: number[] = [];
    const p99: number[] = [];
    for (let run = 0; run < ctx.runs; run++) {
      const rawDb = await ctx.freshDatabase();
      await seedNodes(rawDb);
      const { rate: a, cpu: aCpu } = await rawCeiling(rawDb, readings);
      const primeDb = await ctx.freshDatabase();
      await seedNodes(primeDb);
      const { rate: a2, cpu: a2Cpu } = await rawCeiling(primeDb, readings, { rowsPerTx: 2000, bookkeeping: true, direct: true });
      const directDb = await ctx.freshDatabase();
      await seedNodes(directDb);
      const { rate: a3, cpu: a3Cpu } = await rawCeiling(directDb, readings, { rowsPerTx: 10_000, bookkeeping: false, direct: true });
      // Dropped at once: their autovacuum would otherwise run during (b) and (c).
      await ctx.dropDatabase(rawDb);
      await ctx.dropDatabase(primeDb);
      await ctx.dropDatabase(directDb);

      const svcDb = await ctx.freshDatabase();
      await seedNodes(svcDb);
      const s = await startService(ctx, svcDb);
      try {
        const b = await httpBatches(s, readings);
        const flushes = await flushSizes(s);
        // The rollup refresher recomputes what (b) wrote; (c) starts once it has caught up, so
        // each figure is measured from a quiet database. The catch-up is reported on its own.
        const refresh = await refreshCatchUp(s);
        // The single-reading route's warm-up, then the refresher again for the buckets it marked.
        await httpSingles(s, warmup);
        await refreshCatchUp(s);
        // And the vacuum/analyze that (b)'s 300,000 rows call for, rather than autovacuum during (c).
        await s.container.db.pool.query('VACUUM ANALYZE');
        if (b.stored !== readings.length) throw new Error(`stored ${b.stored} of ${readings.length}`);
        const { rate: c, cpu: cCpu } = await httpSingles(s, singles);
        const lat = await latestLatency(s);
        raw.push(a);
        rawPrime.push(a2);
        rawDirect.push(a3);
        ratioDirect.push(b.rate / a3);
        ratioPrime.push(b.rate / a2);
        batch.push(b.rate);
        ratio.push(b.rate / a);
        single.push(c);
        p50.push(percentile(lat, 50));
        p99.push(percentile(lat, 99));
        console.log(`   run ${run + 1}: (a) ${Math.round(a)}/s  (b) ${Math.round(b.rate)}/s  (b)/(a) ${(b.rate / a).toFixed(3)}  (c) ${Math.round(c)}/s  latest p50 ${percentile(lat, 50).toFixed(3)} ms`);
        const flushes2 = await flushSizes(s);
        console.log(`          (a′) new rows + latest + invalidation-log row, 2,000 rows a transaction: ${Math.round(a2)}/s, (b)/(a′) ${(b.rate / a2).toFixed(3)}; ${a2Cpu}`);
        console.log(`          (a″) plain COPY into telemetry, no conflict handling: ${Math.round(a3)}/s, (b)/(a″) ${(b.rate / a3).toFixed(3)}; ${a3Cpu}`);
        console.log(`          rollup catch-up after (b): ${refresh.buckets} buckets in ${refresh.seconds.toFixed(2)} s (${refresh.cpu})`);
        console.log(`          (a) ${aCpu}\n          (b) ${b.cpu}, ${flushes.count} flushes of ${Math.round(flushes.sum / flushes.count)} readings on average (${flushes.direct} direct)\n          (c) ${cCpu}, ${flushes2.count - flushes.count} flushes of ${((flushes2.sum - flushes.sum) / (flushes2.count - flushes.count)).toFixed(1)} readings on average (${flushes2.direct - flushes.direct} direct)`);
      } finally {
        await s.close();
      }
    }
    const cache = ctx.redisUrl ? 'Redis cache/pub-sub' : 'in-process cache';
    ctx.report(S, '(a) raw ceiling: COPY + INSERT ON CONFLICT, 2 connections', median(raw), 'readings/s', `${readings.length} rows`);
    ctx.report(S, '(b) sync HTTP batch, 1,000/request, 8 clients', median(batch), 'readings/s', cache);
    ctx.report(S, '(b)/(a) same run', median(ratio), 'ratio', 'bar ≥ 0.75');
    ctx.report(S, "(a′) diagnostic: new rows + latest + invalidation-log row, 2,000 rows a transaction", median(rawPrime), 'readings/s', 'the database alone doing the writer\'s work');
    ctx.report(S, "(b)/(a′) same run", median(ratioPrime), 'ratio', 'the HTTP path against the database doing the same work');
    ctx.report(S, '(a″) diagnostic: plain COPY into telemetry, no conflict handling', median(rawDirect), 'readings/s', 'rows known to be new');
    ctx.report(S, '(b)/(a″) same run', median(ratioDirect), 'ratio', 'the HTTP path against writing new rows with no conflict handling');
    ctx.report(S, '(c) single-reading HTTP, 32 clients', median(single), 'readings/s', `${SINGLE_READINGS} readings`);
    ctx.report(S, '(d) GET latest p50', median(p50), 'ms', `p99 ${median(p99).toFixed(2)} ms`);
  },
};
