import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { readMigrations } from '../src/db/migrate.js';
import { uniqueName, withDatabase } from './support/databases.js';
import { startOwnRedis, startService, stopService, type OwnRedis, type ServiceProcess } from './support/processes.js';

const ADMIN = 'two-instances-admin-0001';
const LIMITED = 'two-instances-limited-0001';
const RATE_LIMIT = 20;
const DAY = 86_400_000;

describe('two service processes on one PostgreSQL and one Redis behave as one service', { timeout: 120_000 }, () => {
  let redis: OwnRedis;
  let databaseUrl: string;
  let pool: pg.Pool;
  let tmp: string;
  const services: ServiceProcess[] = [];
  const dataDirs: string[] = [];

  before(async () => {
    const server = process.env.DATABASE_URL;
    if (!server) throw new Error('DATABASE_URL is not set');
    // An empty, unmigrated database: both instances race to migrate it at start-up.
    const name = uniqueName('vpp_two');
    const admin = new pg.Client({ connectionString: withDatabase(server, 'postgres') });
    await admin.connect();
    await admin.query(`CREATE DATABASE "${name}"`);
    await admin.end();
    databaseUrl = withDatabase(server, name);
    pool = new pg.Pool({ connectionString: databaseUrl, max: 2 });
    redis = await startOwnRedis();
    tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-two-'));
    const starts = [0, 1].map((i) => {
      const dataDir = path.join(tmp, `data-${i}`);
      dataDirs.push(dataDir);
      return startService({
        DATABASE_URL: databaseUrl,
        REDIS_URL: redis.url,
        API_KEYS: `${ADMIN}=admin,${LIMITED}=admin`,
        RATE_LIMIT_PER_MINUTE: String(RATE_LIMIT),
        DATA_DIR: dataDir,
        LOG_DIR: path.join(tmp, `logs-${i}`),
        UNKNOWN_NODES: 'accept',
      });
    });
    services.push(...(await Promise.all(starts)));
  });

  after(async () => {
    await Promise.all(services.map((s) => stopService(s)));
    await pool?.end();
    await redis?.stop();
    if (databaseUrl) {
      const admin = new pg.Client({ connectionString: withDatabase(databaseUrl, 'postgres') });
      await admin.connect();
      await admin.query(`DROP DATABASE IF EXISTS "${new URL(databaseUrl).pathname.slice(1)}" WITH (FORCE)`);
      await admin.end();
    }
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('migrations: started together on an empty database, each migration is applied once and both are ready', async () => {
    const files = (await readMigrations()).map((m) => m.name);
    const { rows } = await pool.query<{ name: string }>('SELECT name FROM schema_migrations ORDER BY name');
    assert.deepEqual(rows.map((r) => r.name), files);
    for (const s of services) assert.equal((await fetch(`${s.url}/health/ready`)).status, 200);
  });

  test('jobs: asked to run the same job at the same moment, one instance runs it and the partition is archived once', async () => {
    const day = Math.floor(Date.now() / DAY) * DAY - 40 * DAY;
    const dayText = new Date(day).toISOString().slice(0, 10);
    await pool.query('SELECT ensure_telemetry_partition($1::date)', [dayText]);
    // Enough rows that archiving takes a while, so the two runs really overlap.
    const { rowCount } = await pool.query(
      `INSERT INTO telemetry (node_id, ts, power_kw)
       SELECT 'node-' || n, $1::timestamptz + s * interval '1 second', n + s / 1000.0
         FROM generate_series(0, 9) AS n, generate_series(0, 19999) AS s`,
      [new Date(day)],
    );
    assert.equal(rowCount, 200_000);
    const ids = await Promise.all(
      services.map(async (s) => ((await (await fetch(`${s.url}/api/operations/jobs`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { instanceId: string }).instanceId),
    );
    assert.notEqual(ids[0], ids[1]);
    const results = await Promise.all(
      services.map(async (s) => {
        const r = await fetch(`${s.url}/api/operations/jobs/telemetry-retention/run`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
        assert.equal(r.status, 200);
        return (await r.json()) as { outcome: string; details?: { dropped?: string[] } };
      }),
    );
    const dropped = results.flatMap((r) => r.details?.dropped ?? []);
    const partition = `telemetry_${dayText.replaceAll('-', '')}`;
    assert.deepEqual(dropped, [partition], JSON.stringify(results));
    for (const r of results) assert.ok(['ok', 'skipped'].includes(r.outcome), JSON.stringify(r));
    const winner = results.findIndex((r) => r.details?.dropped?.length);
    const files = dataDirs.map((d) => existsSync(path.join(d, 'archive', `${partition}.csv.gz`)));
    assert.deepEqual(files, [0, 1].map((i) => i === winner), 'exactly one archive, on the instance that ran the job');
    const arch = await pool.query<{ instance_id: string; row_count: number }>('SELECT instance_id, row_count FROM telemetry_archives');
    assert.deepEqual(arch.rows, [{ instance_id: ids[winner], row_count: 200_000 }]);
    const runs = await pool.query<{ runs: number }>(`SELECT runs FROM job_runs WHERE job = 'telemetry-retention'`);
    // Two runs when the second came after the first had finished (and found nothing to do), one when it overlapped.
    assert.equal(runs.rows[0].runs, results.filter((r) => r.outcome === 'ok').length);
  });

  test('rate limits: one key gets RATE_LIMIT_PER_MINUTE requests in all, whichever instance it talks to', async () => {
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < RATE_LIMIT + 6; i++) {
      const s = services[i % 2];
      const r = await fetch(`${s.url}/api/operations/jobs`, { headers: { authorization: `Bearer ${LIMITED}` } });
      statuses.push(r.status);
      if (r.status === 429) {
        retryAfter = r.headers.get('retry-after');
        const body = (await r.json()) as { error: { code: string } };
        assert.equal(body.error.code, 'RATE_LIMITED');
      } else await r.arrayBuffer();
    }
    assert.equal(statuses.filter((s) => s === 200).length, RATE_LIMIT, statuses.join(','));
    assert.equal(statuses.filter((s) => s === 429).length, 6);
    assert.ok(Number(retryAfter) >= 1);
  });

  test('SSE: a reading ingested on one instance reaches a stream client of the other', async () => {
    const [a, b] = services;
    const ctrl = new AbortController();
    const res = await fetch(`${b.url}/api/realtime/stream?nodeId=sse-two-1`, { headers: { authorization: `Bearer ${ADMIN}`, accept: 'text/event-stream' }, signal: ctrl.signal });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    const event = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error('stream ended');
        buffer += decoder.decode(value, { stream: true });
        const m = /event: telemetry\ndata: (.*)\n/.exec(buffer);
        if (m) return JSON.parse(m[1]) as Record<string, unknown>;
      }
    })();
    try {
      // Let B's subscription settle, then write through A.
      await new Promise((r) => setTimeout(r, 300));
      const ts = Date.now() - 5_000;
      const t0 = performance.now();
      const w = await fetch(`${a.url}/api/telemetry/sse-two-1`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ timestamp: ts, powerKw: 42.5 }),
      });
      assert.equal(w.status, 201);
      const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no telemetry event on B within 5 s; got: ${buffer.slice(0, 500)}`)), 5_000));
      const got = await Promise.race([event, timeout]);
      const ms = performance.now() - t0;
      assert.equal(got.nodeId, 'sse-two-1');
      assert.ok(JSON.stringify(got).includes('42.5'), JSON.stringify(got));
      console.log(`# two instances: telemetry event written on A reached an SSE client of B ${Math.round(ms)} ms after the write was sent`);
    } finally {
      ctrl.abort();
      await event.catch(() => undefined);
    }
  });
});
