/**
 * Realtime figures: the live portfolio over 1,000 nodes (query + aggregation, cached HTTP,
 * and the pure in-memory aggregation for comparison), and SSE delivery latency from publish on
 * `telemetry.latest` to receipt by a client while 5,000 readings/s flow.
 */
import http from 'node:http';
import type { Container } from '../../src/container.js';
import type { RealtimeDomain } from '../../src/realtime/index.js';
import { computePortfolio, loadPortfolioRows } from '../../src/realtime/portfolio.js';
import { TELEMETRY_LATEST_CHANNEL } from '../../src/realtime/stream.js';
import { latencies, median, percentile, rng, startBenchServer, type BenchSection } from '../harness.js';

const KEY = 'bench-realtime-admin-key';
const TYPES = ['solar', 'wind', 'battery', 'data_center', 'ev_charging', 'chp', 'hydro', 'demand_response', 'other'];
const NODES = 1000;
const RATE = 5000; // readings per second
const SECONDS = 10;

async function seedFleet(container: Container): Promise<string[]> {
  const rand = rng(40);
  const ids: string[] = [];
  const now = Date.now();
  const rows: unknown[][] = [];
  for (let i = 0; i < NODES; i++) {
    const id = `rt-${String(i).padStart(4, '0')}`;
    const type = TYPES[i % TYPES.length];
    const cap = 50 + Math.round(rand() * 5000);
    ids.push(id);
    rows.push([id, type, i % 50 === 0 ? 'decommissioned' : 'active', cap, type === 'battery' ? cap * 2 : null, 60]);
  }
  await container.db.pool.query(
    `INSERT INTO nodes (node_id, type, status, capacity_kw, storage_capacity_kwh, telemetry_interval_seconds, doc)
     SELECT id, type, status, cap, st, iv, jsonb_build_object('nodeId', id)
       FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::int[]) AS u(id, type, status, cap, st, iv)`,
    [0, 1, 2, 3, 4, 5].map((k) => rows.map((r) => r[k])),
  );
  // 90 % report; ages spread over 0..10 minutes so fresh and stale both occur.
  const latest = ids.filter(() => rand() < 0.9).map((id) => {
    const ts = new Date(now - Math.round(rand() * 600_000)).toISOString();
    return [id, ts, JSON.stringify({ nodeId: id, timestamp: ts, powerKw: Math.round((rand() - 0.3) * 2000), stateOfChargePct: Math.round(rand() * 100), healthStatus: rand() < 0.05 ? 'fault' : 'ok' })];
  });
  await container.db.pool.query(
    `INSERT INTO telemetry_latest (node_id, ts, received_at, reading)
     SELECT id, ts::timestamptz, now(), r::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, ts, r)`,
    [latest.map((l) => l[0]), latest.map((l) => l[1]), latest.map((l) => l[2])],
  );
  await container.nodes.reloadAll();
  return ids;
}

/** Publishes RATE messages/s for SECONDS on the channel; one SSE client records publish→receipt latency. */
async function measureSse(container: Container, base: string, ids: string[]): Promise<{ p50: number; p99: number; received: number; sent: number; resyncs: number; rate: number }> {
  const lat: number[] = [];
  let resyncs = 0;
  const req = http.get(`${base}/api/realtime/stream?events=telemetry`, { headers: { authorization: `Bearer ${KEY}` }, agent: false });
  await new Promise<void>((resolve, reject) => {
    req.on('error', reject);
    req.on('response', (res) => {
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        const now = performance.timeOrigin + performance.now();
        const blocks = (buf + chunk).split('\n\n');
        buf = blocks.pop() ?? '';
        for (const block of blocks) {
          if (block.includes('event: resync')) resyncs++;
          const d = block.indexOf('data: ');
          if (d < 0 || !block.includes('event: telemetry')) continue;
          const ev = JSON.parse(block.slice(d + 6)) as { reading: { extra: { sentAt: number } } };
          lat.push(now - ev.reading.extra.sentAt);
        }
      });
      resolve();
    });
  });
  await new Promise((r) => setTimeout(r, 200));
  const tickMs = 10;
  const t0 = performance.now();
  let sent = 0;
  while (performance.now() - t0 < SECONDS * 1000) {
    const due = Math.floor(((performance.now() - t0) / 1000) * RATE);
    // Catch up to the schedule after a late timer, so the rate holds on a busy machine.
    const batch = due - sent;
    for (let k = 0; k < batch; k++) {
      const id = ids[sent % ids.length];
      const ts = new Date().toISOString();
      const reading = { timestamp: ts, powerKw: (sent % 997) - 300, healthStatus: 'ok', extra: { sentAt: performance.timeOrigin + performance.now() } };
      void container.pubsub.publish(TELEMETRY_LATEST_CHANNEL, JSON.stringify({ nodeId: id, timestamp: ts, receivedAt: ts, reading }));
      sent++;
    }
    await new Promise((r) => setTimeout(r, tickMs));
  }
  const elapsed = (performance.now() - t0) / 1000;
  await new Promise((r) => setTimeout(r, 1000));
  req.destroy();
  return { p50: percentile(lat, 50), p99: percentile(lat, 99), received: lat.length, sent, resyncs, rate: sent / elapsed };
}

export const section: BenchSection = {
  name: 'realtime',
  async run(ctx) {
    const svc = await startBenchServer(await ctx.freshDatabase(), { name: 'rt', apiKey: KEY, redisUrl: ctx.redisUrl });
    try {
      const ids = await seedFleet(svc.container);
      const rt = svc.container.domains.find((d) => 'hub' in d && 'portfolio' in d) as RealtimeDomain;
      const computeP50: number[] = [];
      const httpP50: number[] = [];
      const memoryP50: number[] = [];
      const rows = await loadPortfolioRows(svc.container.db.readPool);
      for (let run = 0; run < ctx.runs; run++) {
        computeP50.push(median(await latencies(100, () => rt.portfolio.compute(Date.now()))));
        httpP50.push(median(await latencies(200, () => svc.app.inject({ method: 'GET', url: '/api/realtime/portfolio', headers: { authorization: `Bearer ${KEY}` } }))));
        memoryP50.push(median(await latencies(200, async () => computePortfolio(rows, Date.now()))));
      }
      ctx.report('realtime', 'portfolio p50, uncached (1 query + aggregation, 1,000 nodes)', median(computeP50), 'ms');
      ctx.report('realtime', 'GET /api/realtime/portfolio p50 (≤5 s cache, 1,000 nodes)', median(httpP50), 'ms', `cache: ${svc.container.cache.kind}`);
      ctx.report('realtime', 'portfolio aggregation alone, in memory (1,000 nodes)', median(memoryP50), 'ms', 'what an in-memory latest map would save per recompute');

      const p50s: number[] = [];
      const p99s: number[] = [];
      let last = { received: 0, sent: 0, resyncs: 0, rate: 0 };
      for (let run = 0; run < ctx.runs; run++) {
        const r = await measureSse(svc.container, svc.baseUrl, ids);
        p50s.push(r.p50);
        p99s.push(r.p99);
        last = r;
      }
      const note = `target ${RATE}/s (achieved ${Math.round(last.rate)}/s) for ${SECONDS} s via ${svc.container.pubsub.kind} pub/sub; last run ${last.received}/${last.sent} received, ${last.resyncs} resyncs; client in the same process`;
      ctx.report('realtime', 'SSE delivery latency p50', median(p50s), 'ms', note);
      ctx.report('realtime', 'SSE delivery latency p99', median(p99s), 'ms');
    } finally {
      await svc.close();
    }
  },
};
