import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { PoolClient } from 'pg';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { OPERATIONS_JOBS, restoreArchive, runRollupRetention, type ArchiveManifest } from '../src/operations/index.js';

const DAY = 86_400_000;
const today = Math.floor(Date.now() / DAY) * DAY;
const dayName = (ms: number) => `telemetry_${new Date(ms).toISOString().slice(0, 10).replaceAll('-', '')}`;

interface Row {
  node_id: string;
  ts: string;
  power_kw: number;
  voltage_v: number | null;
  health_status: string | null;
  extra: unknown;
  flags: number;
}

/** Readings for one UTC day: `nodes` nodes every `stepMin` minutes, with awkward text in `extra`. */
function dayRows(dayMs: number, nodes: number, stepMin: number): Row[] {
  const rows: Row[] = [];
  for (let n = 0; n < nodes; n++) {
    for (let t = dayMs; t < dayMs + DAY; t += stepMin * 60_000) {
      const i = rows.length;
      rows.push({
        node_id: `op-node-${n}`,
        ts: new Date(t).toISOString(),
        power_kw: Math.round(Math.sin(i) * 1e6) / 1e3,
        voltage_v: i % 5 === 0 ? null : 400 + (i % 7) / 10,
        health_status: i % 11 === 0 ? null : 'ok',
        extra: i % 3 === 0 ? { note: `line one\nline "two", three`, n: i } : null,
        flags: i % 4,
      });
    }
  }
  return rows;
}

/** Minimal RFC 4180 parser for the test's own reading of an archive (quotes, doubled quotes, newlines). */
function parseCsv(text: string): string[][] {
  const out: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  let wasQuoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') {
      quoted = true;
      wasQuoted = true;
    } else if (c === ',') {
      row.push(field === '' && !wasQuoted ? '\u0000NULL' : field);
      field = '';
      wasQuoted = false;
    } else if (c === '\n') {
      row.push(field === '' && !wasQuoted ? '\u0000NULL' : field);
      out.push(row);
      row = [];
      field = '';
      wasQuoted = false;
    } else field += c;
  }
  if (field !== '' || row.length) {
    row.push(field);
    out.push(row);
  }
  return out;
}

describe('operations: partitions, retention, archive, restore', () => {
  let t: TestApp;
  const oldDays = [today - 45 * DAY, today - 31 * DAY];
  const keptDay = today - 29 * DAY;
  const inserted = new Map<number, Row[]>();

  async function insertDay(dayMs: number, nodes: number, stepMin: number): Promise<Row[]> {
    const rows = dayRows(dayMs, nodes, stepMin);
    await t.container.db.pool.query('SELECT ensure_telemetry_partition($1::date)', [new Date(dayMs).toISOString().slice(0, 10)]);
    await t.container.db.pool.query(
      `INSERT INTO telemetry (node_id, ts, power_kw, voltage_v, health_status, extra, flags)
       SELECT node_id, ts, power_kw, voltage_v, health_status, extra, flags FROM json_populate_recordset(null::telemetry, $1)`,
      [JSON.stringify(rows)],
    );
    inserted.set(dayMs, rows);
    return rows;
  }

  async function tableExists(name: string): Promise<boolean> {
    const { rows } = await t.container.db.pool.query('SELECT to_regclass($1) AS r', [name]);
    return rows[0].r !== null;
  }

  before(async () => {
    t = await createTestApp({ env: { RETENTION_TELEMETRY_DAYS: '30', RETENTION_ROLLUP_DAYS: '100' } });
    await insertDay(oldDays[0], 3, 15);
    await insertDay(oldDays[1], 4, 10);
    await insertDay(keptDay, 2, 30);
    const pool = t.container.db.pool;
    // Rollup marks and quality counters of a dropped day must go with it; the kept day's stay.
    for (const d of [...oldDays, keptDay]) {
      await pool.query('INSERT INTO telemetry_dirty_buckets (node_id, bucket_start) VALUES ($1, $2)', ['op-node-0', new Date(d + 3_600_000)]);
      await pool.query('INSERT INTO telemetry_quality_keys (node_id, ts, duplicates) VALUES ($1, $2, 3)', ['op-node-0', new Date(d + 12 * 3_600_000)]);
    }
    // A direct write's invalidation-log row, still pending, over a dropped day and the kept day:
    // retention turns it into marks first, then drops the dropped day's.
    const b = (ms: number) => ms / 900_000;
    const r = (ms: number) => `[${new Date(ms).toISOString()},${new Date(ms + 900_000).toISOString()})`;
    await pool.query('INSERT INTO telemetry_invalidation_log (ranges, marks) VALUES ($1::tstzmultirange, $2)', [
      `{${r(oldDays[0] + 7_200_000)},${r(keptDay + 7_200_000)}}`,
      JSON.stringify([['op-node-1', b(oldDays[0] + 7_200_000), b(oldDays[0] + 7_200_000) + 1, b(keptDay + 7_200_000), b(keptDay + 7_200_000) + 1]]),
    ]);
  });
  after(async () => t?.close());

  test('partition job creates yesterday through 7 days ahead', async () => {
    const s = await t.container.jobs.runNow(OPERATIONS_JOBS.partitions);
    assert.equal(s.outcome, 'ok', s.error);
    for (let d = -1; d <= 7; d++) assert.ok(await tableExists(dayName(today + d * DAY)), dayName(today + d * DAY));
    assert.equal(await tableExists(dayName(today + 8 * DAY)), false);
    // Idempotent.
    assert.equal((await t.container.jobs.runNow(OPERATIONS_JOBS.partitions)).outcome, 'ok');
  });

  test('partitions are attached without blocking readers or writers of telemetry', async () => {
    const pool = t.container.db.pool;
    const future = today + 7 * DAY;
    await pool.query(`DROP TABLE ${dayName(future)}`);
    // A long reader holds ACCESS SHARE on telemetry: CREATE TABLE ... PARTITION OF would wait for it
    // (and every insert would queue behind that wait); ATTACH PARTITION does not.
    const reader = await pool.connect();
    try {
      await reader.query('BEGIN');
      await reader.query('SELECT count(*) FROM telemetry');
      const t0 = performance.now();
      const s = await t.container.jobs.runNow(OPERATIONS_JOBS.partitions);
      assert.equal(s.outcome, 'ok', s.error);
      assert.ok(performance.now() - t0 < 1500, `job took ${Math.round(performance.now() - t0)} ms`);
      await reader.query('COMMIT');
    } finally {
      reader.release();
    }
    const { rows } = await pool.query<{ bound: string }>(
      `SELECT pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.relname = $1 AND i.inhparent = 'telemetry'::regclass`,
      [dayName(future)],
    );
    assert.equal(rows.length, 1, 'attached to telemetry');
    assert.match(rows[0].bound, new RegExp(new Date(future).toISOString().slice(0, 10)));
    // The primary key reached the new partition: a second identical insert conflicts.
    const ts = new Date(future + 3_600_000);
    await pool.query(`INSERT INTO telemetry (node_id, ts, power_kw) VALUES ('pk-check', $1, 1)`, [ts]);
    const again = await pool.query(`INSERT INTO telemetry (node_id, ts, power_kw) VALUES ('pk-check', $1, 2) ON CONFLICT (node_id, ts) DO NOTHING`, [ts]);
    assert.equal(again.rowCount, 0);
    await pool.query(`DELETE FROM telemetry WHERE node_id = 'pk-check'`);
  });

  test('an archive that cannot be written stops the drop; the data stays; /health shows the failure', async () => {
    const archiveDir = path.join(t.container.config.dataDir, 'archive');
    await mkdir(t.container.config.dataDir, { recursive: true });
    await writeFile(archiveDir, 'not a folder'); // mkdir of the archive folder fails
    try {
      const s = await t.container.jobs.runNow(OPERATIONS_JOBS.telemetryRetention);
      assert.equal(s.outcome, 'error');
      const { rows } = await t.container.db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${dayName(oldDays[0])}`);
      assert.equal(rows[0].n, inserted.get(oldDays[0])!.length);
      const health = (await t.request({ method: 'GET', url: '/health', key: null })).json();
      assert.equal(health.status, 'degraded');
      assert.equal(health.checks.jobs.jobs[OPERATIONS_JOBS.telemetryRetention].outcome, 'error');
    } finally {
      await rm(archiveDir, { force: true });
    }
  });

  test('retention archives then drops whole partitions older than the retention, and only those', async () => {
    const s = await t.container.jobs.runNow(OPERATIONS_JOBS.telemetryRetention);
    assert.equal(s.outcome, 'ok', s.error);
    assert.deepEqual((s.details as { dropped: string[] }).dropped.sort(), oldDays.map(dayName).sort());
    for (const d of oldDays) assert.equal(await tableExists(dayName(d)), false, `${dayName(d)} dropped`);
    assert.ok(await tableExists(dayName(keptDay)));
    const pool = t.container.db.pool;
    const left = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry');
    assert.equal(left.rows[0].n, inserted.get(keptDay)!.length);
    const dirty = await pool.query<{ b: Date }>('SELECT bucket_start AS b FROM telemetry_dirty_buckets ORDER BY bucket_start');
    assert.deepEqual(dirty.rows.map((r) => r.b.getTime()), [keptDay + 3_600_000, keptDay + 7_200_000]);
    assert.equal((await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry_invalidation_log')).rows[0].n, 0);
    const q = await pool.query<{ day: string }>(`SELECT DISTINCT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day FROM telemetry_quality_keys`);
    assert.deepEqual(q.rows.map((r) => r.day), [new Date(keptDay).toISOString().slice(0, 10)]);
    const arch = await pool.query<{ partition: string; dropped_at: Date | null; row_count: number }>('SELECT partition, dropped_at, row_count FROM telemetry_archives ORDER BY partition');
    assert.equal(arch.rows.length, 2);
    for (const r of arch.rows) assert.ok(r.dropped_at, `${r.partition} marked dropped`);

    // Nothing left to do: a second run drops nothing.
    const again = await t.container.jobs.runNow(OPERATIONS_JOBS.telemetryRetention);
    assert.deepEqual((again.details as { dropped: string[] }).dropped, []);
  });

  test('each archive is gzip CSV whose manifest matches an independent reading of the file', async () => {
    const dir = path.join(t.container.config.dataDir, 'archive');
    for (const d of oldDays) {
      const file = path.join(dir, `${dayName(d)}.csv.gz`);
      const bytes = await readFile(file);
      const manifest = JSON.parse(await readFile(path.join(dir, `${dayName(d)}.manifest.json`), 'utf8')) as ArchiveManifest;
      const rows = inserted.get(d)!;
      assert.equal(manifest.sha256, createHash('sha256').update(bytes).digest('hex'));
      assert.equal(manifest.bytes, bytes.length);
      assert.equal(manifest.rowCount, rows.length);
      assert.equal(manifest.nodeCount, new Set(rows.map((r) => r.node_id)).size);
      const times = rows.map((r) => Date.parse(r.ts));
      assert.equal(Date.parse(manifest.minTs!), Math.min(...times));
      assert.equal(Date.parse(manifest.maxTs!), Math.max(...times));
      assert.equal(manifest.partitionFrom, new Date(d).toISOString());
      assert.equal(manifest.partitionTo, new Date(d + DAY).toISOString());

      const csv = parseCsv(gunzipSync(bytes).toString('utf8'));
      const header = csv[0];
      assert.deepEqual(header, manifest.columns);
      const col = (name: string) => header.indexOf(name);
      assert.equal(csv.length - 1, rows.length);
      const byKey = new Map(csv.slice(1).map((r) => [`${r[col('node_id')]}|${Date.parse(r[col('ts')])}`, r]));
      for (const want of rows) {
        const got = byKey.get(`${want.node_id}|${Date.parse(want.ts)}`);
        assert.ok(got, `${want.node_id} ${want.ts} archived`);
        assert.equal(Number(got[col('power_kw')]), want.power_kw);
        assert.equal(got[col('voltage_v')] === '\u0000NULL' ? null : Number(got[col('voltage_v')]), want.voltage_v);
        assert.equal(got[col('health_status')] === '\u0000NULL' ? null : got[col('health_status')], want.health_status);
        assert.deepEqual(got[col('extra')] === '\u0000NULL' ? null : JSON.parse(got[col('extra')]), want.extra);
        assert.equal(Number(got[col('flags')]), want.flags);
      }
    }
  });

  test('restore loads an archive back exactly, and a second restore inserts nothing', async () => {
    const d = oldDays[1];
    const file = path.join(t.container.config.dataDir, 'archive', `${dayName(d)}.csv.gz`);
    const r1 = await restoreArchive(t.container.db.pool, file);
    assert.deepEqual(r1, { rows: inserted.get(d)!.length, inserted: inserted.get(d)!.length });
    const { rows } = await t.container.db.pool.query<Row & { ts: Date }>(
      'SELECT node_id, ts, power_kw, voltage_v, health_status, extra, flags FROM telemetry WHERE ts >= $1 AND ts < $2 ORDER BY node_id, ts',
      [new Date(d), new Date(d + DAY)],
    );
    const want = [...inserted.get(d)!].sort((a, b) => (a.node_id === b.node_id ? Date.parse(a.ts) - Date.parse(b.ts) : a.node_id < b.node_id ? -1 : 1));
    assert.deepEqual(rows.map((r) => ({ ...r, ts: r.ts.toISOString() })), want);
    const r2 = await restoreArchive(t.container.db.pool, file);
    assert.deepEqual(r2, { rows: want.length, inserted: 0 });
  });

  test('npm run restore-archive: restores, and refuses a file whose checksum does not match', async () => {
    const d = oldDays[0];
    const file = path.join(t.container.config.dataDir, 'archive', `${dayName(d)}.csv.gz`);
    const run = (f: string) =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/restore-archive.ts', f], { env: { ...process.env, DATABASE_URL: t.databaseUrl } });
        let out = '';
        child.stdout.on('data', (b: Buffer) => (out += b.toString()));
        child.stderr.on('data', (b: Buffer) => (out += b.toString()));
        child.on('exit', (code) => resolve({ code, out }));
      });
    const tampered = path.join(t.container.config.dataDir, 'tampered.csv.gz');
    const bytes = await readFile(file);
    bytes[bytes.length - 10] ^= 0xff;
    await writeFile(tampered, bytes);
    await writeFile(path.join(t.container.config.dataDir, 'tampered.manifest.json'), await readFile(path.join(path.dirname(file), `${dayName(d)}.manifest.json`)));
    const bad = await run(tampered);
    assert.equal(bad.code, 1, bad.out);
    assert.match(bad.out, /checksum/);
    const count = async () => (await t.container.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry WHERE ts >= $1 AND ts < $2', [new Date(d), new Date(d + DAY)])).rows[0].n;
    assert.equal(await count(), 0);
    const good = await run(file);
    assert.equal(good.code, 0, good.out);
    assert.equal(await count(), inserted.get(d)!.length);
  });

  test('a partition left detached by an interrupted run is resumed; unmarked tables are left alone', async () => {
    const pool = t.container.db.pool;
    // The restores above brought both old days back; the next run removes them again.
    const d = oldDays[1];
    await pool.query(`COMMENT ON TABLE ${dayName(d)} IS 'vpp:retention-detached'`);
    await pool.query(`ALTER TABLE telemetry DETACH PARTITION ${dayName(d)}`);
    await pool.query('CREATE TABLE telemetry_20000101 (x int)');
    const s = await t.container.jobs.runNow(OPERATIONS_JOBS.telemetryRetention);
    assert.equal(s.outcome, 'ok', s.error);
    assert.deepEqual((s.details as { dropped: string[] }).dropped.sort(), oldDays.map(dayName).sort());
    assert.equal(await tableExists(dayName(d)), false);
    assert.ok(await tableExists('telemetry_20000101'));
    const m = JSON.parse(await readFile(path.join(t.container.config.dataDir, 'archive', `${dayName(d)}.manifest.json`), 'utf8')) as ArchiveManifest;
    assert.equal(m.rowCount, inserted.get(d)!.length);
  });

  test('rollup retention deletes buckets older than RETENTION_ROLLUP_DAYS in chunks, plain and partitioned tables', async () => {
    const pool = t.container.db.pool;
    await pool.query('CREATE TABLE telemetry_rollup_zz_plain (node_id text, bucket_start timestamptz, v double precision)');
    await pool.query('CREATE TABLE telemetry_rollup_zz_part (node_id text, bucket_start timestamptz, v double precision) PARTITION BY RANGE (bucket_start)');
    await pool.query(`CREATE TABLE telemetry_rollup_zz_part_a PARTITION OF telemetry_rollup_zz_part FOR VALUES FROM ('2000-01-01') TO ('2100-01-01')`);
    const cutoff = Date.now() - 100 * DAY;
    const times: number[] = [];
    for (let i = 0; i < 90; i++) times.push(cutoff - 50 * DAY + i * 24 * 3_600_000 + 12 * 3_600_000);
    const expectedOld = times.filter((x) => x < cutoff).length; // every bucket is 12 h from the cutoff: the job running a little later changes nothing
    assert.ok(expectedOld > 20 && expectedOld < 90);
    for (const table of ['telemetry_rollup_zz_plain', 'telemetry_rollup_zz_part']) {
      await pool.query(`INSERT INTO ${table} SELECT 'n', to_timestamp(x / 1000.0), 1 FROM unnest($1::float8[]) AS x`, [times]);
    }
    const deleted = await runRollupRetention(pool, { retentionDays: 100, chunkRows: 7 });
    assert.equal(deleted.telemetry_rollup_zz_plain, expectedOld);
    assert.equal(deleted.telemetry_rollup_zz_part, expectedOld);
    for (const table of ['telemetry_rollup_zz_plain', 'telemetry_rollup_zz_part']) {
      const { rows } = await pool.query<{ n: number; min: Date }>(`SELECT count(*)::int AS n, min(bucket_start) AS min FROM ${table}`);
      assert.equal(rows[0].n, 90 - expectedOld);
      assert.ok(rows[0].min.getTime() >= cutoff - 60_000);
    }
    const s = await t.container.jobs.runNow(OPERATIONS_JOBS.rollupRetention);
    assert.equal(s.outcome, 'ok', s.error);
  });

  test('metrics: pool gauges, retention runs, job runs', async () => {
    const text = (await t.request({ method: 'GET', url: '/metrics', key: null })).body;
    assert.match(text, /^db_pool_connections\{pool="primary",state="total"\} \d+$/m);
    assert.match(text, /^db_pool_connections\{pool="primary",state="idle"\} \d+$/m);
    assert.match(text, /^db_pool_waiting_requests\{pool="primary"\} \d+$/m);
    assert.match(text, /^db_pool_max_connections\{pool="primary"\} 20$/m);
    assert.match(text, /^retention_runs_total\{target="telemetry",outcome="ok"\} 3$/m);
    assert.match(text, /^retention_runs_total\{target="telemetry",outcome="error"\} 1$/m);
    assert.match(text, /^retention_partitions_dropped_total 4$/m);
    const telemetryRows = 2 * inserted.get(oldDays[0])!.length + 2 * inserted.get(oldDays[1])!.length;
    assert.match(text, new RegExp(`^retention_rows_removed_total\\{target="telemetry"\\} ${telemetryRows}$`, 'm'));
    assert.match(text, /^job_runs_total\{job="telemetry-retention",outcome="ok"\} 3$/m);
    assert.match(text, /^job_last_success_timestamp_seconds\{job="telemetry-partitions"\} \d/m);
    assert.match(text, /^retention_partition_step_duration_seconds_count\{step="archive"\} 4$/m);
  });

  test('a concurrent detach left pending (interrupted in its second phase) is finalized, archived and dropped', async () => {
    const pool = t.container.db.pool;
    const d = today - 40 * DAY;
    const rows = await insertDay(d, 2, 30);
    // A snapshot that can see the partition makes DETACH … CONCURRENTLY wait in its second
    // transaction; cancelled there (statement_timeout), it leaves the partition "detach pending".
    const reader = await pool.connect();
    const detacher = await pool.connect();
    try {
      await reader.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await reader.query('SELECT count(*) FROM telemetry');
      await detacher.query("SET statement_timeout = '1s'");
      await assert.rejects(detacher.query(`ALTER TABLE telemetry DETACH PARTITION ${dayName(d)} CONCURRENTLY`), /statement timeout/);
      await detacher.query('RESET statement_timeout');
      await reader.query('COMMIT');
    } finally {
      reader.release();
      detacher.release();
    }
    const { rows: inh } = await pool.query<{ pending: boolean }>(
      `SELECT i.inhdetachpending AS pending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname = $1`,
      [dayName(d)],
    );
    assert.deepEqual(inh, [{ pending: true }], 'the partition is left detach-pending');
    const s = await t.container.jobs.runNow(OPERATIONS_JOBS.telemetryRetention);
    assert.equal(s.outcome, 'ok', s.error);
    assert.deepEqual((s.details as { dropped: string[] }).dropped, [dayName(d)]);
    assert.equal(await tableExists(dayName(d)), false);
    const m = JSON.parse(await readFile(path.join(t.container.config.dataDir, 'archive', `${dayName(d)}.manifest.json`), 'utf8')) as ArchiveManifest;
    assert.equal(m.rowCount, rows.length);
  });

  test('metrics: a saturated pool shows as active connections and waiting requests', async () => {
    const pool = t.container.db.pool;
    const held: PoolClient[] = [];
    let waiting: Promise<string> = Promise.resolve('answered');
    try {
      // Background work (jobs, the queue consumer) may hold a connection for a moment: fill the pool up to its size.
      while (pool.totalCount < 20) held.push(await pool.connect());
      waiting = pool.query('SELECT 1').then(() => 'answered', (err: Error) => err.message);
      // Only the pool gauges: a full scrape would also run other domains' collectors, which may need a connection.
      const registry = t.container.metrics.registry;
      const text = (await registry.getSingleMetricAsString('db_pool_connections')) + '\n' + (await registry.getSingleMetricAsString('db_pool_waiting_requests'));
      const gauge = (state: string) => Number(new RegExp(`^db_pool_connections\\{pool="primary",state="${state}"\\} (\\d+)$`, 'm').exec(text)?.[1]);
      assert.equal(gauge('total'), 20, text);
      // Ours are active; a connection another holder has just released may show as idle for a moment.
      assert.ok(gauge('active') >= held.length && gauge('active') + gauge('idle') === 20, text);
      const w = /^db_pool_waiting_requests\{pool="primary"\} (\d+)$/m.exec(text);
      assert.ok(w && (Number(w[1]) >= 1 || gauge('idle') > 0), text);
    } finally {
      for (const c of held) c.release();
      assert.equal(await waiting, 'answered');
    }
  });
});

describe('operations admin routes', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());

  test('list and run jobs (admin); the run goes through the job lock and is recorded', async () => {
    const list = await t.request({ method: 'GET', url: '/api/operations/jobs' });
    assert.equal(list.statusCode, 200);
    const names = (list.json().items as { job: string }[]).map((i) => i.job);
    for (const j of Object.values(OPERATIONS_JOBS)) assert.ok(names.includes(j), j);
    const run = await t.request({ method: 'POST', url: `/api/operations/jobs/${OPERATIONS_JOBS.partitions}/run` });
    assert.equal(run.statusCode, 200, run.body);
    assert.equal(run.json().outcome, 'ok');
    const { rows } = await t.container.db.pool.query<{ runs: number; instance_id: string }>('SELECT runs, instance_id FROM job_runs WHERE job = $1', [OPERATIONS_JOBS.partitions]);
    assert.ok(rows[0].runs >= 1);
    assert.equal(rows[0].instance_id, list.json().instanceId);
  });

  for (const [what, req, status, code] of [
    ['no key', { method: 'GET', url: '/api/operations/jobs', key: null }, 401, undefined],
    ['a read key', { method: 'GET', url: '/api/operations/jobs', key: KEYS.read }, 403, undefined],
    ['a telemetry key running a job', { method: 'POST', url: '/api/operations/jobs/telemetry-partitions/run', key: KEYS.telemetry }, 403, undefined],
    ['an unknown job', { method: 'POST', url: '/api/operations/jobs/no-such-job/run' }, 404, 'JOB_NOT_FOUND'],
    ['a malformed job name', { method: 'POST', url: '/api/operations/jobs/Bad%20Name!/run' }, 400, 'VALIDATION_ERROR'],
    ['a too long job name', { method: 'POST', url: `/api/operations/jobs/${'a'.repeat(80)}/run` }, 400, 'VALIDATION_ERROR'],
  ] as const) {
    test(`${what} gets ${status} with the error envelope`, async () => {
      const r = await t.request(req as never);
      assert.equal(r.statusCode, status, r.body);
      const body = r.json();
      assert.equal(typeof body.error.code, 'string');
      assert.equal(typeof body.error.message, 'string');
      assert.ok(Array.isArray(body.error.details));
      if (code) assert.equal(body.error.code, code);
    });
  }
});

describe('metric names across every domain follow Prometheus conventions', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());

  test('counters end in _total, times are in seconds, sizes in bytes, names are snake_case', async () => {
    const metrics = await t.container.metrics.registry.getMetricsAsJSON();
    assert.ok(metrics.length > 10, `only ${metrics.length} metrics registered`);
    const problems: string[] = [];
    for (const m of metrics) {
      const type = String(m.type);
      if (!/^[a-z][a-z0-9_]*$/.test(m.name)) problems.push(`${m.name}: not snake_case`);
      if (type === 'counter' && !m.name.endsWith('_total')) problems.push(`${m.name}: counter without _total`);
      if (type !== 'counter' && m.name.endsWith('_total')) problems.push(`${m.name}: _total on a ${type}`);
      if (/_(ms|millis|milliseconds|minutes|hours|kb|mb|kib|mib)(_|$)/.test(m.name)) problems.push(`${m.name}: not a base unit (seconds, bytes)`);
      if (/(duration|latency|time|age|lag)(_|$)/.test(m.name) && !/_seconds(_total)?$|_timestamp_seconds$/.test(m.name)) problems.push(`${m.name}: a time without _seconds`);
      if (!m.help || m.help.length < 5) problems.push(`${m.name}: no help text`);
    }
    assert.deepEqual(problems, []);
  });
});
