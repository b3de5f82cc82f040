import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createTestDatabase, dropDatabase } from './support/databases.js';
import { startOwnRedis, startService, stopService, sleep, type OwnRedis, type ServiceProcess } from './support/processes.js';

const KEY = 'faults-redis-admin-0001';

describe('Redis stops', { timeout: 120_000 }, () => {
  let databaseUrl: string;
  let tmp: string;
  let redis: OwnRedis;
  let svc: ServiceProcess;
  let clock = Date.now() - 120_000;

  const call = async (method: string, url: string, body?: unknown) => {
    const r = await fetch(`${svc.url}${url}`, {
      method,
      headers: { authorization: `Bearer ${KEY}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    });
    const text = await r.text();
    return { status: r.status, retryAfter: r.headers.get('retry-after'), json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };
  const ingest = (nodeId: string, powerKw: number) => call('POST', `/api/telemetry/${nodeId}`, { timestamp: (clock += 1000), powerKw });
  const asyncBatch = (nodeId: string) => call('POST', '/api/telemetry/batch?mode=async', { readings: [{ nodeId, timestamp: (clock += 1000), powerKw: 1 }] });
  const health = async () => {
    const r = await call('GET', '/health');
    return { status: r.status, body: r.json as { status: string; checks: Record<string, { ok: boolean }> } };
  };

  /** Polls /health until its status is `want` (or the time is up); returns the last answer. */
  const waitHealth = async (want: string, ms: number) => {
    const t0 = performance.now();
    let h = await health();
    while (h.body.status !== want && performance.now() - t0 < ms) {
      await sleep(100);
      h = await health();
    }
    return h;
  };

  before(async () => {
    databaseUrl = await createTestDatabase(process.env.DATABASE_URL!, process.env.TEST_TEMPLATE_DATABASE);
    tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-fault-redis-'));
    redis = await startOwnRedis();
    svc = await startService({ DATABASE_URL: databaseUrl, REDIS_URL: redis.url, API_KEYS: `${KEY}=admin`, UNKNOWN_NODES: 'accept', DATA_DIR: path.join(tmp, 'data'), LOG_DIR: path.join(tmp, 'logs') });
  });
  after(async () => {
    await stopService(svc);
    await redis?.stop();
    if (databaseUrl) await dropDatabase(databaseUrl);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('reads fall back to PostgreSQL, sync ingestion works, /health degraded, async 503; all normal again when Redis is back', async () => {
    // Baseline with Redis.
    assert.equal((await ingest('rf-1', 10)).status, 201);
    const latest0 = await call('GET', '/api/telemetry/rf-1/latest');
    assert.equal(latest0.status, 200);
    assert.equal(latest0.json.powerKw, 10);
    assert.equal((await asyncBatch('rf-async')).status, 202);
    const h0 = await waitHealth('ok', 10_000);
    assert.equal(h0.body.status, 'ok', JSON.stringify(h0.body));

    await redis.stop();
    const down = performance.now();
    // /health notices within the command timeout.
    let h = await health();
    while (h.body.status !== 'degraded' && performance.now() - down < 10_000) {
      await sleep(100);
      h = await health();
    }
    const detectMs = performance.now() - down;
    assert.equal(h.status, 200);
    assert.equal(h.body.status, 'degraded');
    assert.equal(h.body.checks.cache.ok, false);
    assert.equal(h.body.checks.database.ok, true);

    // Sync ingestion keeps working, and reads come from PostgreSQL (the new value, not a stale cache).
    const latencies: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      const r = await ingest('rf-1', 20 + i);
      latencies.push(performance.now() - t0);
      assert.equal(r.status, 201, JSON.stringify(r.json));
    }
    const latest1 = await call('GET', '/api/telemetry/rf-1/latest');
    assert.equal(latest1.status, 200, JSON.stringify(latest1.json));
    assert.equal(latest1.json.powerKw, 29);
    const portfolio = await call('GET', '/api/realtime/portfolio');
    assert.equal(portfolio.status, 200, JSON.stringify(portfolio.json));
    const hist = await call('GET', `/api/telemetry/rf-1/historical?from=${clock - 3_600_000}&to=${clock + 1000}&interval=raw&limit=1000`);
    assert.equal(hist.status, 200, JSON.stringify(hist.json));

    // Async mode cannot be accepted into nothing.
    const a = await asyncBatch('rf-async');
    assert.equal(a.status, 503, JSON.stringify(a.json));
    assert.ok(Number(a.retryAfter) >= 1);
    assert.equal(typeof (a.json.error as { code?: string }).code, 'string');

    await redis.start();
    const up = performance.now();
    let healthyMs = Infinity;
    let asyncMs = Infinity;
    while (performance.now() - up < 15_000 && (healthyMs === Infinity || asyncMs === Infinity)) {
      if (healthyMs === Infinity && (await health()).body.status === 'ok') healthyMs = performance.now() - up;
      if (asyncMs === Infinity && (await asyncBatch('rf-async')).status === 202) asyncMs = performance.now() - up;
      await sleep(100);
    }
    console.log(`# redis fault: /health degraded ${Math.round(detectMs)} ms after Redis stopped; sync ingestion during the outage ${Math.round(Math.max(...latencies))} ms at worst; ` +
      `after Redis was back: /health ok in ${Math.round(healthyMs)} ms, async accepted in ${Math.round(asyncMs)} ms`);
    assert.ok(healthyMs < 5_000, `health ok after ${Math.round(healthyMs)} ms`);
    assert.ok(asyncMs < 5_000, `async accepted after ${Math.round(asyncMs)} ms`);
    assert.equal((await ingest('rf-1', 99)).status, 201);
    const latest2 = await call('GET', '/api/telemetry/rf-1/latest');
    assert.equal(latest2.json.powerKw, 99);
  });
});
