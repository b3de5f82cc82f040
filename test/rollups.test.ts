import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { accumulate, mergeRanges } from '../src/telemetry/rollup-compute.js';
import { NUMERIC_FIELDS } from '../src/telemetry/rollup-fields.js';
import { loadDirtyMarks, loadReadings, writeRefreshedBuckets, type BucketRow } from '../src/telemetry/rollup-store.js';
import { withTransaction } from '../src/db/pool.js';
import { planPieces } from '../src/telemetry/query-engine.js';
import { RollupRefresher } from '../src/telemetry/rollup-refresher.js';
import { loadConfig } from '../src/config.js';
import { close, putNode, reference, rng, writeReadings, type TestReading } from './telemetry-query-helpers.js';

const iso = (s: string) => Date.parse(s);
const Q = 900_000;

describe('rollup tiers and the refresher', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());

  const get = (node: string, q: string) => t.request({ method: 'GET', url: `/api/telemetry/${node}/historical?${q}`, key: KEYS.read });

  test('15 m rows equal the reference per bucket; 1 h, 2 h, 4 h, 8 h and 1 d rows equal the merge of their children', async () => {
    const nodeId = 'ru-tiers';
    await putNode(t, { nodeId, telemetryIntervalSeconds: 30 });
    const rand = rng(5);
    const rs: TestReading[] = [];
    for (let ts = iso('2026-11-24T22:00:00Z'); ts < iso('2026-11-26T02:00:00Z'); ts += 30_000) {
      if (rand() < 0.05) continue;
      rs.push({ ts: ts + Math.round(rand() * 5000), powerKw: Math.round((rand() - 0.5) * 2000) / 10, voltageV: rand() < 0.2 ? null : 230 + rand(), healthStatus: rand() < 0.1 ? 'offline' : 'ok' });
    }
    await writeReadings(t.container.db.pool, nodeId, rs, 30);
    const st = await t.container.jobs.runNow('rollup-refresh');
    assert.equal(st.outcome, 'ok', st.error);
    const { rows: dirty } = await t.container.db.pool.query('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1', [nodeId]);
    assert.equal(dirty[0].n, 0, 'the refresher cleared every mark');
    const { rows } = await t.container.db.pool.query(
      `SELECT (extract(epoch FROM bucket_start) * 1000)::float8 AS b, n, sum, min, max, first_v, last_v, integral, held, exported_kwh, imported_kwh, available_s
       FROM telemetry_rollup_15m WHERE node_id = $1 AND field = 0 ORDER BY bucket_start`,
      [nodeId],
    );
    assert.ok(rows.length >= 4 * 28);
    for (const r of rows) {
      const ref = reference(rs, 90_000, r.b, r.b + Q);
      assert.equal(r.n, ref.count);
      close(r.sum, ref.sum ?? 0, 'sum');
      close(r.min, ref.min, 'min');
      close(r.max, ref.max, 'max');
      close(r.first_v, ref.first, 'first');
      close(r.last_v, ref.last, 'last');
      close(r.integral / Math.max(r.held, 1e-300), ref.twa ?? 0, 'twa');
      close(r.held, ref.heldSeconds, 'held');
      close(r.exported_kwh, ref.exportedKwh, 'exported');
      close(r.imported_kwh, ref.importedKwh, 'imported');
      close(r.available_s, ref.availableSeconds, 'available');
    }
    const { rows: volt } = await t.container.db.pool.query(`SELECT (extract(epoch FROM bucket_start) * 1000)::float8 AS b, n, integral, held FROM telemetry_rollup_15m WHERE node_id = $1 AND field = 2`, [nodeId]);
    for (const r of volt) {
      const ref = reference(rs, 90_000, r.b, r.b + Q, 'voltageV');
      assert.equal(r.n, ref.count);
      close(r.held, ref.heldSeconds, 'voltage held');
    }
    // Coarser tiers are exactly the composition of finer ones.
    const chain = [
      ['telemetry_rollup_1h', 'telemetry_rollup_15m', '1 hour'],
      ['telemetry_rollup_2h', 'telemetry_rollup_1h', '2 hours'],
      ['telemetry_rollup_4h', 'telemetry_rollup_2h', '4 hours'],
      ['telemetry_rollup_8h', 'telemetry_rollup_4h', '8 hours'],
      ['telemetry_rollup_1d', 'telemetry_rollup_8h', '24 hours'],
    ];
    for (const [coarse, fine, width] of chain) {
      const { rows: pairs } = await t.container.db.pool.query(
        `SELECT c.field, c.bucket_start, c.n, c.sum, c.min, c.max, c.first_v, c.last_v, c.integral, c.held, c.exported_kwh,
                k.n AS kn, k.sum AS ksum, k.min AS kmin, k.max AS kmax, k.first_v AS kfirst, k.last_v AS klast, k.integral AS kintegral, k.held AS kheld, k.exported_kwh AS kexp
         FROM ${coarse} c
         CROSS JOIN LATERAL (
           SELECT sum(f.n)::int AS n, sum(f.sum ORDER BY f.bucket_start) AS sum, min(f.min) AS min, max(f.max) AS max,
                  (array_agg(f.first_v ORDER BY f.bucket_start) FILTER (WHERE f.n > 0))[1] AS first_v,
                  (array_agg(f.last_v ORDER BY f.bucket_start DESC) FILTER (WHERE f.n > 0))[1] AS last_v,
                  sum(f.integral ORDER BY f.bucket_start) AS integral, sum(f.held ORDER BY f.bucket_start) AS held,
                  sum(f.exported_kwh ORDER BY f.bucket_start) AS exported_kwh
           FROM ${fine} f WHERE f.node_id = $1 AND f.field = c.field AND f.bucket_start >= c.bucket_start AND f.bucket_start < c.bucket_start + interval '${width}') k
         WHERE c.node_id = $1`,
        [nodeId],
      );
      assert.ok(pairs.length > 0, coarse);
      for (const r of pairs) {
        const what = `${coarse} ${r.bucket_start.toISOString()} field ${r.field}`;
        assert.equal(r.n, r.kn, `${what} n`);
        // The same doubles: children are summed in time order (ORDER BY bucket_start).
        for (const k of ['sum', 'min', 'max', 'first', 'last', 'integral', 'held', 'exp'] as const) {
          const own = k === 'first' ? r.first_v : k === 'last' ? r.last_v : k === 'exp' ? r.exported_kwh : r[k];
          assert.equal(own, r[`k${k}`], `${what} ${k}`);
        }
      }
    }
    // Migration 010 composes the 2/4/8-hour tiers of existing rollups: run its composition again on
    // emptied tiers and it gives back exactly the rows the refresher built.
    const snapshot = async () =>
      (
        await t.container.db.pool.query(
          `SELECT 'h' || tier AS tier, to_json(r) AS r FROM (
             SELECT '2' AS tier, * FROM telemetry_rollup_2h WHERE node_id = $1 UNION ALL
             SELECT '4', * FROM telemetry_rollup_4h WHERE node_id = $1 UNION ALL
             SELECT '8', * FROM telemetry_rollup_8h WHERE node_id = $1) r ORDER BY 1, r.field, r.bucket_start`,
          [nodeId],
        )
      ).rows;
    const built = await snapshot();
    assert.ok(built.length > 0);
    const sql = readFileSync(new URL('../migrations/010_rollup_binary_tiers.sql', import.meta.url), 'utf8');
    await withTransaction(t.container.db.pool, async (c) => {
      // Other tests' nodes share the tables: keep theirs aside and restore them after.
      await c.query(`CREATE TEMP TABLE keep_2h ON COMMIT DROP AS SELECT * FROM telemetry_rollup_2h WHERE node_id <> $1;
                     CREATE TEMP TABLE keep_4h ON COMMIT DROP AS SELECT * FROM telemetry_rollup_4h WHERE node_id <> $1;
                     CREATE TEMP TABLE keep_8h ON COMMIT DROP AS SELECT * FROM telemetry_rollup_8h WHERE node_id <> $1;`.replaceAll('$1', `'${nodeId}'`));
      await c.query('DELETE FROM telemetry_rollup_2h; DELETE FROM telemetry_rollup_4h; DELETE FROM telemetry_rollup_8h');
      await c.query(sql.slice(sql.indexOf('DO $$')));
      await c.query(`DELETE FROM telemetry_rollup_2h WHERE node_id <> '${nodeId}'; DELETE FROM telemetry_rollup_4h WHERE node_id <> '${nodeId}'; DELETE FROM telemetry_rollup_8h WHERE node_id <> '${nodeId}';
                     INSERT INTO telemetry_rollup_2h SELECT * FROM keep_2h; INSERT INTO telemetry_rollup_4h SELECT * FROM keep_4h; INSERT INTO telemetry_rollup_8h SELECT * FROM keep_8h`);
    });
    const composed = await snapshot();
    assert.equal(composed.length, built.length);
    composed.forEach((x, i) => {
      const a = x.r as Record<string, number | string | null>;
      const b = built[i].r as Record<string, number | string | null>;
      for (const k of Object.keys(b)) {
        if (typeof b[k] === 'number') close(a[k] as number, b[k] as number, `migration 010 ${x.tier} ${String(b.bucket_start)} ${k}`);
        else assert.equal(a[k], b[k], `migration 010 ${x.tier} ${String(b.bucket_start)} ${k}`);
      }
    });
    // And every API answer from any tier equals the reference.
    for (const q of ['interval=1d', 'interval=1h', 'interval=15m', 'interval=30m&tz=Asia/Kathmandu']) {
      const r = await get(nodeId, `from=2026-11-24T22:00:00Z&to=2026-11-26T02:00:00Z&${q}&agg=twa,count,sum,first,last&fill=null`);
      assert.equal(r.statusCode, 200, r.body);
      const b = r.json().buckets as { start: string; powerKw: Record<string, number | null> }[];
      b.forEach((x, i) => {
        const start = Math.max(iso('2026-11-24T22:00:00Z'), Date.parse(x.start));
        const end = i + 1 < b.length ? Date.parse(b[i + 1].start) : iso('2026-11-26T02:00:00Z');
        const ref = reference(rs, 90_000, start, end);
        close(x.powerKw.twa, ref.twa, `${q} ${x.start} twa`);
        close(x.powerKw.count, ref.count, `${q} count`);
        close(x.powerKw.sum, ref.sum, `${q} sum`);
        close(x.powerKw.first, ref.first, `${q} first`);
        close(x.powerKw.last, ref.last, `${q} last`);
      });
    }
  });

  test('raw and rollup answers are the same doubles: before the refresh, after it, with a few buckets dirty, and with the rollups\' cap stale', async () => {
    const nodeId = 'ru-ident';
    await putNode(t, { nodeId, telemetryIntervalSeconds: 60 });
    // Irregular times, values with many significant digits, gaps longer than the cap, a null field.
    const rand = rng(7);
    const rs: TestReading[] = [];
    for (let ts = iso('2026-11-22T00:00:07.123Z'); ts < iso('2026-11-25T06:00:00Z'); ts += 20_000 + Math.floor(rand() * 70_000)) {
      if (rand() < 0.01) ts += 600_000;
      rs.push({ ts, powerKw: (rand() - 0.4) * 1234.56789, voltageV: rand() < 0.1 ? null : 390 + rand() * 20.123 });
    }
    await writeReadings(t.container.db.pool, nodeId, rs, 60);
    const { aggregatePeriods } = await import('../src/telemetry/query-engine.js');
    const { intervalPeriods } = await import('../src/telemetry/buckets.js');
    const { FIELD_BY_NAME } = await import('../src/telemetry/rollup-fields.js');
    const fields = ['powerKw', 'voltageV'].map((n) => FIELD_BY_NAME.get(n)!);
    const from = iso('2026-11-22T00:00:00Z');
    const to = iso('2026-11-25T06:00:00Z');
    const shapes: [string, string][] = [['1h', 'UTC'], ['1d', 'UTC'], ['1d', 'Europe/Berlin'], ['30m', 'Asia/Kathmandu'], ['1w', 'America/New_York'], ['15m', 'UTC']];
    const answers = async () => {
      const out: unknown[] = [];
      for (const [interval, tz] of shapes) {
        const periods = intervalPeriods(interval as never, tz, from, to).map((p) => ({ start: Math.max(p.start, from), end: Math.min(p.end, to) }));
        const r = await aggregatePeriods(t.container.db.pool, nodeId, 180_000, periods, fields);
        out.push({ interval, tz, sources: r.sources, partials: r.partials });
      }
      return out;
    };
    const partialsOf = (xs: unknown[]) => xs.map((x) => (x as { partials: unknown }).partials);
    const fromRaw = await answers();
    assert.ok(fromRaw.every((x) => (x as { sources: string[] }).sources.join() === 'raw'), 'every bucket is dirty before the refresh');
    await t.container.jobs.runNow('rollup-refresh');
    const fromTiers = await answers();
    assert.ok(fromTiers.some((x) => (x as { sources: string[] }).sources.includes('1d')));
    assert.deepStrictEqual(partialsOf(fromTiers), partialsOf(fromRaw));
    // A few dirty buckets: their units are computed from below, the rest read as rows.
    await t.container.db.pool.query(
      `INSERT INTO telemetry_dirty_buckets (node_id, bucket_start) VALUES ($1, '2026-11-23T05:15:00Z'), ($1, '2026-11-23T17:45:00Z'), ($1, '2026-11-24T00:00:00Z')`,
      [nodeId],
    );
    const mixed = await answers();
    assert.ok(mixed.some((x) => (x as { sources: string[] }).sources.includes('raw') && (x as { sources: string[] }).sources.includes('8h')));
    assert.deepStrictEqual(partialsOf(mixed), partialsOf(fromRaw));
    // Rollups built with another cap serve nothing: every unit from raw 15-minute buckets.
    await t.container.db.pool.query('UPDATE telemetry_rollup_state SET cap_seconds = 999 WHERE node_id = $1', [nodeId]);
    const stale = await answers();
    assert.ok(stale.every((x) => (x as { sources: string[] }).sources.join() === 'raw'));
    assert.deepStrictEqual(partialsOf(stale), partialsOf(fromRaw));
    await t.container.db.pool.query('UPDATE telemetry_rollup_state SET cap_seconds = 180 WHERE node_id = $1', [nodeId]);
    // Migration 011 recomposes existing rows the same way: running it again changes none of them.
    const rows = async () => (await t.container.db.pool.query(`SELECT to_json(r)::text AS r FROM (SELECT '1h' AS t, * FROM telemetry_rollup_1h WHERE node_id = $1 UNION ALL SELECT '1d', * FROM telemetry_rollup_1d WHERE node_id = $1 UNION ALL SELECT '8h', * FROM telemetry_rollup_8h WHERE node_id = $1) r ORDER BY 1`, [nodeId])).rows.map((r) => r.r as string).sort();
    const before011 = await rows();
    const sql011 = readFileSync(new URL('../migrations/011_rollup_ordered_sums.sql', import.meta.url), 'utf8');
    await t.container.db.pool.query(sql011.slice(sql011.indexOf('DO $$')));
    assert.deepEqual(await rows(), before011);
  });

  test('a mark set again while the refresher computes survives, and the next run picks it up', async () => {
    const nodeId = 'ru-race';
    await putNode(t, { nodeId, telemetryIntervalSeconds: 60 });
    const base = iso('2026-11-25T10:00:00Z');
    await writeReadings(t.container.db.pool, nodeId, [{ ts: base, powerKw: 10 }, { ts: base + 60_000, powerKw: 20 }], 60);
    // The refresher's first step: read the marks and the raw readings...
    const marks = (await loadDirtyMarks(t.container.db.pool, 1000)).filter((m) => m.nodeId === nodeId);
    assert.ok(marks.length > 0);
    const periods = marks.map((m) => ({ start: m.bucketStart, end: m.bucketStart + Q }));
    const readings = await loadReadings(t.container.db.pool, nodeId, NUMERIC_FIELDS, mergeRanges(periods.map((p) => ({ lo: p.start - 180_000, hi: p.end })), 0));
    const partials = accumulate(readings, periods, 180_000, 0);
    // ...meanwhile a correction lands in the same bucket and marks it again...
    await writeReadings(t.container.db.pool, nodeId, [{ ts: base + 60_000, powerKw: 99 }], 60);
    // ...then the refresher writes what it computed from the older readings.
    const rows: BucketRow[] = [];
    partials.forEach((p, i) => p.fields.forEach((agg, f) => (agg.n > 0 || agg.held > 0) && rows.push({ field: NUMERIC_FIELDS[f].code, bucketStart: periods[i].start, agg, extras: f === 0 ? p.extras : null })));
    await withTransaction(t.container.db.pool, (c) => writeRefreshedBuckets(c, nodeId, marks, rows, 180));
    const { rows: left } = await t.container.db.pool.query('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1 AND bucket_start = $2', [nodeId, new Date(base)]);
    assert.equal(left[0].n, 1, 'the re-set mark was kept');
    const q = 'from=2026-11-25T10:00:00Z&to=2026-11-25T10:15:00Z&interval=15m&agg=max';
    const now = await get(nodeId, q);
    assert.equal(now.json().buckets[0].powerKw.max, 99, 'queries still answer the dirty bucket from raw');
    await t.container.jobs.runNow('rollup-refresh');
    const after = await get(nodeId, q);
    assert.equal(after.json().buckets[0].powerKw.max, 99);
    assert.equal(after.headers['x-rollup-sources'], '15m');
  });

  test('with a settle time, a bucket is recomputed only once no write has touched it for that long; queries read it from raw meanwhile', async () => {
    assert.equal(loadConfig({}).rollupSettleSeconds, 30, 'the service default');
    const nodeId = 'ru-settle';
    await putNode(t, { nodeId, telemetryIntervalSeconds: 60 });
    const rs: TestReading[] = [];
    for (let ts = iso('2026-11-25T08:00:00Z'); ts < iso('2026-11-25T09:00:00Z'); ts += 60_000) rs.push({ ts, powerKw: 10 + (ts / 60_000) % 7 });
    await writeReadings(t.container.db.pool, nodeId, rs, 60);
    const marksOf = async () => (await t.container.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1', [nodeId])).rows[0].n;
    const marked = await marksOf();
    assert.ok(marked >= 4);
    const refresher = new RollupRefresher(t.container.db, t.container.nodes, t.container.logger, { settleMs: 60_000 });
    await refresher.refreshOnce();
    assert.equal(await marksOf(), marked, 'fresh marks are left');
    const q = 'from=2026-11-25T08:00:00Z&to=2026-11-25T09:00:00Z&interval=15m&agg=max';
    const during = await get(nodeId, q);
    assert.equal(during.statusCode, 200);
    assert.match(String(during.headers['x-rollup-sources']), /raw/, 'unsettled buckets are read from raw');
    const expected = [0, 1, 2, 3].map((k) => reference(rs, 180_000, iso('2026-11-25T08:00:00Z') + k * Q, iso('2026-11-25T08:00:00Z') + (k + 1) * Q).max);
    assert.deepEqual(during.json().buckets.map((b: { powerKw: { max: number } }) => b.powerKw.max), expected);
    // The same marks, untouched for two minutes: now they are taken.
    await t.container.db.pool.query("UPDATE telemetry_dirty_buckets SET marked_at = marked_at - interval '2 minutes' WHERE node_id = $1", [nodeId]);
    const run = await refresher.refreshOnce();
    assert.ok(run.buckets >= marked);
    assert.equal(await marksOf(), 0);
    const after = await get(nodeId, q);
    assert.deepEqual(after.json().buckets.map((b: { powerKw: { max: number } }) => b.powerKw.max), expected);
    assert.equal(after.headers['x-rollup-sources'], '15m');
  });

  test('a changed telemetry interval invalidates the node\'s rollups until they are recomputed with the new cap', async () => {
    const nodeId = 'ru-cap';
    await putNode(t, { nodeId, telemetryIntervalSeconds: 60 });
    // Readings every 5 minutes: with a 3-minute cap each holds 3 min; with a 15-minute cap, 5 min.
    const rs: TestReading[] = [];
    for (let ts = iso('2026-11-25T00:00:00Z'); ts < iso('2026-11-25T06:00:00Z'); ts += 300_000) rs.push({ ts, powerKw: 60 });
    await writeReadings(t.container.db.pool, nodeId, rs, 60);
    await t.container.jobs.runNow('rollup-refresh');
    const q = 'from=2026-11-25T00:00:00Z&to=2026-11-25T06:00:00Z&interval=1h&agg=twa';
    const energyOf = async () => {
      const r = await get(nodeId, `${q}&fill=null`);
      return { tier: r.headers['x-rollup-tier'], body: r.json() };
    };
    const before = await energyOf();
    assert.equal(before.tier, '1h');
    close(before.body.buckets[1].powerKw.twa, 60, 'twa');
    const held = (capMs: number) => reference(rs, capMs, iso('2026-11-25T01:00:00Z'), iso('2026-11-25T02:00:00Z')).heldSeconds;
    assert.equal(held(180_000), 12 * 180);
    await putNode(t, { nodeId, telemetryIntervalSeconds: 300 });
    // Right after the change: the rollups' cap no longer matches, so the answer comes from raw.
    const during = await energyOf();
    assert.equal(during.tier, 'raw');
    await t.container.jobs.runNow('rollup-refresh');
    const after = await energyOf();
    assert.equal(after.tier, '1h');
    // Energy per hour now covers the full hour (held 3600 s × 60 kW = 60 kWh).
    const { energyByPeriods } = await import('../src/telemetry/energy.js');
    const e = await energyByPeriods(t.container.db.pool, { nodeId, telemetryIntervalSeconds: 300 }, [{ start: iso('2026-11-25T01:00:00Z'), end: iso('2026-11-25T02:00:00Z') }]);
    assert.equal(e.tier, '1h');
    close(e.periods[0].energyExportedKwh, 60, 'kWh with the new cap');
    close(e.periods[0].heldSeconds, held(900_000), 'held with the new cap');
  });

  test('an interval change in either direction recomputes the buckets only a hold reaches (no reading of their own)', async () => {
    // The last reading before a 20-minute gap is at 17:25:45.658: with interval 60 s (cap 180 s) it
    // holds until 17:28:45.658, with 120 s (cap 360 s) until 17:31:45.658, into the 17:30 bucket.
    const rs: TestReading[] = [];
    for (let ts = iso('2026-11-25T17:00:45.658Z'); ts <= iso('2026-11-25T17:25:45.658Z'); ts += 60_000) rs.push({ ts, powerKw: 8 + ((ts / 60_000) % 7) });
    for (let ts = iso('2026-11-25T17:46:44.658Z'); ts < iso('2026-11-25T19:00:00Z'); ts += 60_000) rs.push({ ts, powerKw: -3 - ((ts / 60_000) % 5) });
    const from = iso('2026-11-25T17:00:00Z');
    const to = iso('2026-11-25T19:00:00Z');
    const q = `from=2026-11-25T17:00:00Z&to=2026-11-25T19:00:00Z&interval=15m&agg=count,twa&fill=null`;
    for (const [nodeId, first, second] of [['ru-cap-up', 60, 120], ['ru-cap-down', 120, 60]] as const) {
      await putNode(t, { nodeId, telemetryIntervalSeconds: first });
      await writeReadings(t.container.db.pool, nodeId, rs, first);
      await t.container.jobs.runNow('rollup-refresh');
      await putNode(t, { nodeId, telemetryIntervalSeconds: second });
      await t.container.jobs.runNow('rollup-refresh');
      const r = await get(nodeId, q);
      assert.equal(r.statusCode, 200, r.body);
      assert.equal(r.headers['x-rollup-tier'], '15m', nodeId);
      const buckets = r.json().buckets as { start: string; count: number; powerKw: { twa: number | null } | null }[];
      assert.equal(buckets.length, (to - from) / Q);
      for (const [k, b] of buckets.entries()) {
        const ref = reference(rs, 3 * second * 1000, from + k * Q, from + (k + 1) * Q);
        assert.equal(b.count, ref.count, `${nodeId} ${b.start} count`);
        close(b.powerKw?.twa ?? null, ref.twa, `${nodeId} ${b.start} twa`);
      }
      // The hour above them (its 15-minute children recomputed) agrees as well.
      const h = await get(nodeId, 'from=2026-11-25T17:00:00Z&to=2026-11-25T18:00:00Z&interval=1h&agg=twa');
      assert.equal(h.headers['x-rollup-tier'], '1h');
      close(h.json().buckets[0].powerKw.twa, reference(rs, 3 * second * 1000, from, from + 3_600_000).twa, `${nodeId} hour twa`);
    }
  });

  test('the planner covers each period exactly once, coarsest tiers first, avoiding dirty buckets', () => {
    const day = 86_400_000;
    const periods = [{ start: iso('2026-01-01T18:30:00Z'), end: iso('2026-01-02T18:30:00Z') }, { start: iso('2026-01-02T18:30:00Z'), end: iso('2026-01-04T03:07:00Z') }];
    const dirty = [iso('2026-01-04T01:15:00Z')];
    const { pieces, raw } = planPieces(periods, dirty, true);
    const all = [...pieces.map((p) => ({ ...p })), ...raw.map((r) => ({ ...r, tier: 'raw' }))];
    periods.forEach((p, idx) => {
      const mine = all.filter((x) => x.idx === idx).sort((a, b) => a.lo - b.lo);
      assert.equal(mine[0].lo, p.start);
      assert.equal(mine[mine.length - 1].hi, p.end);
      for (let i = 1; i < mine.length; i++) assert.equal(mine[i].lo, mine[i - 1].hi, 'contiguous, no overlap');
    });
    assert.ok(pieces.some((p) => p.tier === '1d' && p.hi - p.lo === day), 'a whole UTC day from the 1 d tier');
    assert.ok(raw.some((r) => r.lo === dirty[0] && r.hi === dirty[0] + Q), 'the dirty bucket from raw');
    assert.ok(raw.some((r) => r.hi === periods[1].end), 'the unaligned end from raw');
    assert.ok(!pieces.some((p) => p.lo <= dirty[0] && dirty[0] < p.hi), 'no tier piece covers the dirty bucket');
  });
});
