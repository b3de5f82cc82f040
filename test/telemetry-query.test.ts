import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { close, holdRefresherLock, putNode, reference, rng, writeReadings, type TestReading } from './telemetry-query-helpers.js';
import { nodeFingerprint } from '../src/analytics/store.js';
import { energyForNodes } from '../src/analytics/energy-many.js';

const iso = (s: string) => Date.parse(s);
// The fixtures lie in the past (DST dates, real data of 2011 and 2021): retention must not drop them mid-test.
const KEEP_OLD_DATA = { RETENTION_TELEMETRY_DAYS: '36500', RETENTION_ROLLUP_DAYS: '36500' };
const H = 3_600_000;
const AGGS = ['avg', 'min', 'max', 'sum', 'count', 'first', 'last', 'twa'] as const;
type Field = 'powerKw' | 'voltageV' | 'frequencyHz';

interface Bucket {
  start: string;
  count: number;
  filled?: boolean;
  [field: string]: unknown;
}

function qs(params: Record<string, string | number | undefined>): string {
  return Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`)
    .join('&');
}

/** Checks every bucket of an answer (fill=null, so buckets are consecutive) against the reference. */
function checkBuckets(buckets: Bucket[], readings: TestReading[], capMs: number, from: number, to: number, fields: Field[], label: string): void {
  assert.ok(buckets.length > 0, `${label}: no buckets`);
  buckets.forEach((b, i) => {
    const start = Math.max(from, Date.parse(b.start));
    const end = i + 1 < buckets.length ? Date.parse(buckets[i + 1].start) : to;
    const power = reference(readings, capMs, start, end, 'powerKw');
    assert.equal(b.count, power.readings, `${label} ${b.start} count`);
    for (const f of fields) {
      const ref = reference(readings, capMs, start, end, f);
      const got = b[f] as Record<string, number | null>;
      for (const a of AGGS) close(got[a], a === 'count' ? ref.count : ref[a], `${label} ${b.start} ${f}.${a}`);
    }
  });
}

describe('historical queries', () => {
  let t: TestApp;
  const interval = 60;
  const cap = 3 * interval * 1000;
  const nodeId = 'hq-utc-1';
  const readings: TestReading[] = [];
  const from = iso('2026-11-20T00:00:00Z');
  const to = iso('2026-11-23T00:00:00Z');

  const get = (node: string, params: Record<string, string | number | undefined>, headers: Record<string, string> = {}) =>
    t.request({ method: 'GET', url: `/api/telemetry/${node}/historical?${qs(params)}`, headers, key: KEYS.read });
  /** Readings of one node through the real batch ingestion (powerKw and healthStatus). */
  const postBatch = (node: string, rs: TestReading[]) =>
    t.request({
      method: 'POST',
      url: '/api/telemetry/batch',
      key: KEYS.writer,
      payload: { readings: rs.map((r) => ({ nodeId: node, timestamp: new Date(r.ts).toISOString(), powerKw: r.powerKw, healthStatus: r.healthStatus })) },
    });

  before(async () => {
    t = await createTestApp({ env: KEEP_OLD_DATA });
    await putNode(t, { nodeId, telemetryIntervalSeconds: interval });
    const rand = rng(42);
    for (let ts = from; ts < to; ts += 60_000) {
      // A 40-minute hole (longer than the 3-minute cap) and jittered timestamps.
      if (ts >= iso('2026-11-21T06:10:00Z') && ts < iso('2026-11-21T06:50:00Z')) continue;
      const jitter = Math.round((rand() - 0.5) * 30_000);
      readings.push({
        ts: ts + jitter,
        powerKw: Math.round((rand() * 2 - 1) * 8000) / 10,
        voltageV: rand() < 0.1 ? null : 228 + Math.round(rand() * 40) / 10,
        frequencyHz: 49.9 + Math.round(rand() * 20) / 100,
        healthStatus: rand() < 0.04 ? 'fault' : 'ok',
      });
    }
    await writeReadings(t.container.db.pool, nodeId, readings, interval);
  });
  after(async () => t?.close());

  test('every agg and interval equals the reference, from raw before the refresh and from rollups after', async () => {
    const cases: { interval: string; from: number; to: number; rolled: string }[] = [
      { interval: '1m', from: iso('2026-11-21T05:50:00Z'), to: iso('2026-11-21T07:10:00Z'), rolled: 'raw' },
      { interval: '5m', from: iso('2026-11-21T05:00:00Z'), to: iso('2026-11-21T09:00:00Z'), rolled: 'raw' },
      { interval: '15m', from: iso('2026-11-21T00:00:00Z'), to: iso('2026-11-21T12:00:00Z'), rolled: '15m' },
      { interval: '30m', from: iso('2026-11-20T12:07:00Z'), to: iso('2026-11-21T12:00:00Z'), rolled: '15m' },
      { interval: '1h', from, to, rolled: '1h' },
      { interval: '1d', from, to, rolled: '1d' },
      { interval: '1d', from: iso('2026-11-20T05:03:10Z'), to: iso('2026-11-22T17:31:00Z'), rolled: '1d' },
      { interval: '1w', from, to, rolled: '1d' },
      { interval: '1mo', from, to, rolled: '1d' },
    ];
    const run = async (phase: 'raw' | 'rolled') => {
      for (const c of cases) {
        const r = await get(nodeId, { from: new Date(c.from).toISOString(), to: c.to, interval: c.interval, fields: 'powerKw,voltageV,frequencyHz', agg: AGGS.join(','), fill: 'null' });
        assert.equal(r.statusCode, 200, r.body);
        // Before the refresh every bucket with data is dirty (the hole's buckets are not: nothing to answer there).
        if (phase === 'raw') assert.match(String(r.headers['x-rollup-sources']), /raw$/, `${c.interval}: dirty buckets come from raw`);
        else assert.equal(r.headers['x-rollup-tier'], c.rolled, `${c.interval} after refresh`);
        const body = r.json();
        assert.equal(body.interval, c.interval);
        checkBuckets(body.buckets, readings, cap, c.from, c.to, ['powerKw', 'voltageV', 'frequencyHz'], `${phase} ${c.interval}`);
      }
    };
    const release = await holdRefresherLock(t);
    try {
      await run('raw');
    } finally {
      await release();
    }
    await t.container.jobs.runNow('rollup-refresh');
    await run('rolled');
  });

  test('UTC bucket layout: hourly starts, half-open ends, first bucket aligned before from', async () => {
    const r = await get(nodeId, { from: '2026-11-20T10:20:00Z', to: '2026-11-20T13:00:00Z', interval: '1h', fill: 'null' });
    const starts = r.json().buckets.map((b: Bucket) => b.start);
    assert.deepEqual(starts, ['2026-11-20T10:00:00.000Z', '2026-11-20T11:00:00.000Z', '2026-11-20T12:00:00.000Z']);
    // Only readings in [from, to) count: the first bucket has 40 minutes of readings.
    const first = r.json().buckets[0];
    assert.equal(first.count, readings.filter((x) => x.ts >= iso('2026-11-20T10:20:00Z') && x.ts < iso('2026-11-20T11:00:00Z')).length);
    // Epoch milliseconds are accepted too.
    const ms = await get(nodeId, { from: iso('2026-11-20T10:20:00Z'), to: iso('2026-11-20T13:00:00Z'), interval: '1h', fill: 'null' });
    assert.deepEqual(ms.json().buckets, r.json().buckets);
  });

  test('defaults: interval from the range, fields powerKw, agg avg,min,max, fill none', async () => {
    const r = await get(nodeId, { from: '2026-11-20T00:00:00Z', to: '2026-11-22T00:00:00Z' });
    assert.equal(r.statusCode, 200);
    const body = r.json();
    assert.equal(body.interval, '15m');
    assert.equal(body.tz, 'UTC');
    assert.deepEqual(Object.keys(body.buckets[0]).sort(), ['count', 'powerKw', 'start']);
    assert.deepEqual(Object.keys(body.buckets[0].powerKw).sort(), ['avg', 'max', 'min']);
    // The 40-minute hole leaves 15-minute buckets without readings or held time: omitted.
    assert.ok(body.buckets.length < 192 && body.buckets.length >= 189, String(body.buckets.length));
    for (const [range, expected] of [[3 * H, '1m'], [20 * H, '5m'], [6 * 24 * H, '30m'], [30 * 24 * H, '1h'], [200 * 24 * H, '1d'], [500 * 24 * H, '1w']] as const) {
      const x = await get(nodeId, { from: from, to: from + range });
      assert.equal(x.json().interval, expected, `range ${range / H} h`);
    }
  });

  test('fills: null, previous and linear respect maxGap', async () => {
    const sparse = 'hq-sparse';
    await putNode(t, { nodeId: sparse, telemetryIntervalSeconds: 300 });
    const rs: TestReading[] = [];
    // Every 5 minutes 10:00–11:00, nothing 11:00–12:00, every 5 minutes 12:00–12:30.
    for (let ts = iso('2026-11-20T10:00:00Z'); ts < iso('2026-11-20T12:30:00Z'); ts += 300_000) {
      if (ts > iso('2026-11-20T11:00:00Z') && ts < iso('2026-11-20T12:00:00Z')) continue;
      rs.push({ ts, powerKw: (ts - iso('2026-11-20T10:00:00Z')) / 60_000 });
    }
    await writeReadings(t.container.db.pool, sparse, rs, 300);
    const base = { from: '2026-11-20T10:00:00Z', to: '2026-11-20T12:30:00Z', interval: '1m', agg: 'avg,twa,count' };
    const none = (await get(sparse, { ...base })).json().buckets as Bucket[];
    // Buckets with held time but no reading are kept (twa is defined there); the hour after 11:15 has neither.
    const heldUntil = iso('2026-11-20T11:15:00Z'); // last reading 11:00 + cap 15 min
    assert.equal(none.length, (heldUntil - iso('2026-11-20T10:00:00Z')) / 60_000 + 30);
    const b1002 = none.find((b) => b.start === '2026-11-20T10:02:00.000Z')!;
    assert.equal(b1002.count, 0);
    assert.deepEqual(b1002.powerKw, { avg: null, twa: 0, count: 0 });
    // The readings carry no voltageV: held into a bucket they give it nothing to show for that field,
    // so with fields=voltageV only the buckets holding readings are listed; with powerKw too, the held ones are.
    const volts = (await get(sparse, { ...base, fields: 'voltageV' })).json().buckets as Bucket[];
    assert.equal(volts.length, 19);
    for (const b of volts) {
      assert.equal(b.count, 1, b.start);
      assert.deepEqual(b.voltageV, { avg: null, twa: null, count: 0 });
    }
    const both = (await get(sparse, { ...base, fields: 'powerKw,voltageV' })).json().buckets as Bucket[];
    assert.equal(both.length, none.length);
    assert.deepEqual(both.find((b) => b.start === '2026-11-20T10:02:00.000Z')!.voltageV, { avg: null, twa: null, count: 0 });
    const nul = (await get(sparse, { ...base, fill: 'null' })).json().buckets as Bucket[];
    assert.equal(nul.length, 150);
    assert.deepEqual(nul.find((b) => b.start === '2026-11-20T11:30:00.000Z')!.powerKw, { avg: null, twa: null, count: 0 });
    // previous: within the 5-minute cadence (gap 300 s ≤ maxGap 900 s) the value carries forward.
    const prev = (await get(sparse, { ...base, fill: 'previous' })).json().buckets as Bucket[];
    const p1003 = prev.find((b) => b.start === '2026-11-20T10:03:00.000Z')!;
    assert.deepEqual(p1003.powerKw, { avg: 0, twa: 0, count: 0 });
    assert.equal(p1003.filled, true);
    // The hour-long gap (3600 s > 900 s) is not filled.
    assert.equal((prev.find((b) => b.start === '2026-11-20T11:30:00.000Z')!.powerKw as { avg: number | null }).avg, null);
    // With maxGap above the gap it is.
    const wide = (await get(sparse, { ...base, fill: 'previous', maxGap: 4000 })).json().buckets as Bucket[];
    assert.equal((wide.find((b) => b.start === '2026-11-20T11:30:00.000Z')!.powerKw as { avg: number }).avg, 60);
    // linear: between 10:05 (5) and 10:10 (10), 10:07 lies at 7.
    const lin = (await get(sparse, { ...base, fill: 'linear' })).json().buckets as Bucket[];
    assert.equal((lin.find((b) => b.start === '2026-11-20T10:07:00.000Z')!.powerKw as { avg: number }).avg, 7);
    assert.equal((lin.find((b) => b.start === '2026-11-20T11:30:00.000Z')!.powerKw as { avg: number | null }).avg, null);
    const linWide = (await get(sparse, { ...base, fill: 'linear', maxGap: 4000 })).json().buckets as Bucket[];
    assert.equal((linWide.find((b) => b.start === '2026-11-20T11:30:00.000Z')!.powerKw as { avg: number }).avg, 90);
    // No reading after the range end: linear leaves the tail, previous fills it only within maxGap.
    assert.equal(lin[lin.length - 1].start, '2026-11-20T12:29:00.000Z');
    // A range that ends inside the hour-long gap: the gap is the same, so nothing in it is filled,
    // whatever `to` is (the reading after `to` decides, not the range's end). First with readings
    // written straight into telemetry (no latest row: the look past `to` is unbounded), then with
    // the latest row ingestion keeps (the look is bounded by maxGap, the latest row tells the rest).
    const cutsAreUnfilled = async () => {
      for (const to of ['2026-11-20T11:08:00Z', '2026-11-20T11:30:00Z', '2026-11-20T12:10:00Z']) {
        for (const fill of ['previous', 'linear']) {
          const cut = (await get(sparse, { ...base, to, fill, maxGap: 1200 })).json().buckets as Bucket[];
          const inGap = cut.filter((b) => b.start > '2026-11-20T11:00:00.000Z' && b.start < '2026-11-20T12:00:00.000Z' && b.count === 0);
          assert.ok(inGap.length > 0, `${to} ${fill}`);
          for (const b of inGap) assert.equal((b.powerKw as { avg: number | null }).avg, null, `${to} ${fill} ${b.start}`);
        }
      }
    };
    await cutsAreUnfilled();
    await t.container.db.pool.query(`INSERT INTO telemetry_latest (node_id, ts, received_at, reading) VALUES ($1, $2, now(), '{}')`, [sparse, new Date(rs[rs.length - 1].ts)]);
    await cutsAreUnfilled();
    // Within maxGap of the next reading after `to`, the end of a range is filled as its middle would be.
    const edge = (await get(sparse, { ...base, to: '2026-11-20T10:08:00Z', fill: 'previous' })).json().buckets as Bucket[];
    assert.deepEqual(edge.at(-1)!.powerKw, { avg: 5, twa: 5, count: 0 });
    assert.equal(edge.at(-1)!.filled, true);
  });

  test('a reading hold longer than the cap is missing time', async () => {
    const r = await get(nodeId, { from: '2026-11-21T06:00:00Z', to: '2026-11-21T07:00:00Z', interval: '15m', agg: 'twa,count', fill: 'null' });
    const b = r.json().buckets as Bucket[];
    // 06:15–06:30 has no readings and is beyond every hold: nothing known.
    assert.deepEqual(b[1].powerKw, { twa: null, count: 0 });
    const last = readings.filter((x) => x.ts < iso('2026-11-21T06:15:00Z')).pop()!;
    assert.ok(last.ts + cap <= iso('2026-11-21T06:15:00Z'));
  });

  test('previous and linear fills over rollup-served buckets equal the same query served from raw', async () => {
    // Rollup reads fetch reading times only when an answer needs them (first/last, these fills):
    // the gap rule must see the same first/last reading times from rollups as from raw.
    const gappy = 'hq-fill-tiers';
    await putNode(t, { nodeId: gappy, telemetryIntervalSeconds: 300 });
    const rs: TestReading[] = [];
    const rand = rng(11);
    // Every 5 minutes over two days, with silent stretches of 40 min, 2 h and 5 h.
    for (let ts = iso('2026-11-24T00:00:00Z'); ts < iso('2026-11-26T00:00:00Z'); ts += 300_000) {
      const h = (ts - iso('2026-11-24T00:00:00Z')) / 3_600_000;
      if ((h >= 5 && h < 5.67) || (h >= 14 && h < 16) || (h >= 30 && h < 35)) continue;
      rs.push({ ts, powerKw: Math.round((rand() - 0.4) * 1000) / 10 });
    }
    const release = await holdRefresherLock(t);
    const q = (fill: string, maxGap?: number) => ({ from: '2026-11-24T00:00:00Z', to: '2026-11-26T00:00:00Z', interval: '1h', agg: 'avg,twa,count,min', fill, ...(maxGap ? { maxGap } : {}) });
    // Readings either side of the 2 h and 5 h stretches are 7,500 s and 18,300 s apart.
    const cases = [q('previous', 8000), q('linear', 8000), q('previous', 20000), q('linear', 20000)];
    const fromRaw: string[] = [];
    try {
      await writeReadings(t.container.db.pool, gappy, rs, 300);
      for (const c of cases) {
        const r = await get(gappy, c);
        assert.equal(r.statusCode, 200, r.body);
        assert.match(String(r.headers['x-rollup-sources']), /raw$/, 'the written hours come from raw');
        fromRaw.push(r.body);
      }
    } finally {
      await release();
    }
    await t.container.jobs.runNow('rollup-refresh');
    for (const [i, c] of cases.entries()) {
      const r = await get(gappy, c);
      assert.equal(r.headers['x-rollup-sources'], '1h', JSON.stringify(c));
      assert.deepEqual(r.json(), JSON.parse(fromRaw[i]), JSON.stringify(c));
      assert.ok((r.json().buckets as Bucket[]).some((b) => b.filled), `${JSON.stringify(c)} fills something`);
    }
  });

  test('corrections and late readings are reflected right after the write, and after the refresh', async () => {
    await t.container.jobs.runNow('rollup-refresh');
    const q = { from: iso('2026-11-20T00:00:00Z'), to: iso('2026-11-23T00:00:00Z'), interval: '1h', fields: 'powerKw', agg: AGGS.join(','), fill: 'null' };
    const before = await get(nodeId, q);
    assert.equal(before.headers['x-rollup-sources'], '1h');
    const release = await holdRefresherLock(t);
    try {
      // Correct a reading (same timestamp, new value) and add a late one inside an existing hour.
      const target = readings[1000];
      target.powerKw = 12345.5;
      const late: TestReading = { ts: iso('2026-11-21T06:30:00Z'), powerKw: -999, healthStatus: 'ok' };
      readings.push(late);
      readings.sort((a, b) => a.ts - b.ts);
      await writeReadings(t.container.db.pool, nodeId, [target, late], interval);
      const after = await get(nodeId, q);
      assert.equal(after.headers['x-rollup-tier'], '1h');
      assert.match(String(after.headers['x-rollup-sources']), /raw/);
      checkBuckets(after.json().buckets, readings, cap, q.from, q.to, ['powerKw'], 'after correction');
      const maxHour = (after.json().buckets as Bucket[]).find((b) => (b.powerKw as { max: number }).max === 12345.5);
      assert.ok(maxHour, 'the corrected value is visible');
    } finally {
      await release();
    }
    await t.container.jobs.runNow('rollup-refresh');
    const refreshed = await get(nodeId, q);
    assert.equal(refreshed.headers['x-rollup-sources'], '1h');
    checkBuckets(refreshed.json().buckets, readings, cap, q.from, q.to, ['powerKw'], 'after refresh');
  });

  test('through the real ingestion: an acknowledged write, and its correction, are in the very next answer', async () => {
    const node = 'hq-ingest';
    await putNode(t, { nodeId: node, telemetryIntervalSeconds: 60 });
    const start = Math.floor((Date.now() - 3 * H) / H) * H;
    const sent: TestReading[] = [];
    for (let i = 0; i < 120; i++) sent.push({ ts: start + i * 60_000, powerKw: (i % 7) * 10 - 20, healthStatus: i % 11 === 0 ? 'fault' : 'ok' });
    const post = (rs: TestReading[]) => postBatch(node, rs);
    const w = await post(sent);
    assert.equal(w.statusCode, 200, w.body);
    const q = { from: start, to: start + 2 * H, interval: '15m', agg: AGGS.join(','), fill: 'null' };
    checkBuckets((await get(node, q)).json().buckets, sent, 180_000, start, start + 2 * H, ['powerKw'], 'after ingestion');
    await t.container.jobs.runNow('rollup-refresh');
    const rolled = await get(node, q);
    assert.equal(rolled.headers['x-rollup-sources'], '15m');
    sent[30] = { ...sent[30], powerKw: 777 };
    const c = await post([sent[30]]);
    assert.equal(c.statusCode, 200, c.body);
    const corrected = await get(node, q);
    assert.match(String(corrected.headers['x-rollup-sources']), /raw/);
    checkBuckets(corrected.json().buckets, sent, 180_000, start, start + 2 * H, ['powerKw'], 'after the correction');
    await t.container.jobs.runNow('rollup-refresh');
    checkBuckets((await get(node, q)).json().buckets, sent, 180_000, start, start + 2 * H, ['powerKw'], 'after the refresh');
  });

  test('through the real ingestion, a direct write (every key newer): its buckets are logged in one row, dirty in the very next answer, marks once the refresher runs', async () => {
    const node = 'hq-direct';
    await putNode(t, { nodeId: node, telemetryIntervalSeconds: 60 });
    const start = Math.floor((Date.now() - 5 * H) / H) * H;
    const first: TestReading[] = [];
    for (let i = 0; i < 120; i++) first.push({ ts: start + i * 60_000, powerKw: (i % 9) * 10 - 30, healthStatus: 'ok' });
    // Newer than all of the first write, from inside the last bucket it filled (whose rollup row it changes).
    const second: TestReading[] = [];
    for (let i = 0; i < 120; i++) second.push({ ts: start + 119 * 60_000 + 30_000 + i * 60_000, powerKw: (i % 5) * 25 - 40, healthStatus: i % 13 === 0 ? 'fault' : 'ok' });
    const post = (rs: TestReading[]) => postBatch(node, rs);
    const pool = t.container.db.pool;
    const count = async (sql: string, values: unknown[] = []) => (await pool.query<{ n: number }>(sql, values)).rows[0].n;
    const marks = () => count('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1', [node]);
    const logged = () => count('SELECT count(*)::int AS n FROM telemetry_invalidation_log');
    const directs = async () => (await t.container.metrics.registry.getSingleMetric('telemetry_direct_writes_total')?.get())?.values[0]?.value ?? 0;
    assert.equal((await post(first)).statusCode, 200);
    await t.container.jobs.runNow('rollup-refresh');
    assert.equal(await marks(), 0);
    const q = { from: start, to: start + 4 * H, interval: '15m', agg: AGGS.join(','), fill: 'null' };
    const all = [...first, ...second];
    const before = await nodeFingerprint(pool, node, start, start + 4 * H);
    const [logBefore, directBefore] = [await logged(), await directs()];
    const w = await post(second);
    assert.equal(w.statusCode, 200, w.body);
    assert.equal((await directs()) - directBefore, 1, 'the second write went direct');
    assert.equal((await logged()) - logBefore, 1, 'one log row for the write');
    assert.equal(await marks(), 0, 'no per-bucket marks');
    assert.notEqual(await nodeFingerprint(pool, node, start, start + 4 * H), before, 'the analytics fingerprint moved');
    const fresh = await get(node, q);
    assert.match(String(fresh.headers['x-rollup-sources']), /raw/);
    checkBuckets(fresh.json().buckets, all, 180_000, start, start + 4 * H, ['powerKw'], 'after the direct write');
    // The fleet path (analytics) reads the log too: hourly figures against the reference.
    const hours = Array.from({ length: 4 }, (_, k) => ({ start: start + k * H, end: start + (k + 1) * H }));
    const [figures] = await energyForNodes(pool, [{ nodeId: node, telemetryIntervalSeconds: 60, periods: hours }]);
    hours.forEach((h, k) => {
      const ref = reference(all, 180_000, h.start, h.end);
      assert.equal(figures[k].readingCount, ref.count, `readings, hour ${k}`);
      close(figures[k].energyExportedKwh, ref.exportedKwh, `exported, hour ${k}`);
      close(figures[k].energyImportedKwh, ref.importedKwh, `imported, hour ${k}`);
      close(figures[k].heldSeconds, ref.heldSeconds, `held, hour ${k}`);
    });
    const run = await t.container.jobs.runNow('rollup-refresh');
    assert.ok((run.details as { logged: number }).logged >= 1, 'the run reports the log rows it expanded');
    assert.equal(await logged(), 0, 'the refresher expanded the log');
    assert.equal(await marks(), 0, 'and cleared the marks it made');
    const rolled = await get(node, q);
    assert.equal(rolled.headers['x-rollup-sources'], '15m');
    checkBuckets(rolled.json().buckets, all, 180_000, start, start + 4 * H, ['powerKw'], 'after the refresh');
  });

  test('csv format (query parameter or Accept header)', async () => {
    const q = { from: '2026-11-20T00:00:00Z', to: '2026-11-20T03:00:00Z', interval: '1h', agg: 'avg,max,count' };
    const json = (await get(nodeId, q)).json().buckets as Bucket[];
    for (const r of [await get(nodeId, { ...q, format: 'csv' }), await get(nodeId, q, { accept: 'text/csv' })]) {
      assert.equal(r.statusCode, 200);
      assert.match(String(r.headers['content-type']), /^text\/csv/);
      assert.ok(r.headers['x-rollup-tier']);
      const lines = r.body.trim().split('\n');
      assert.equal(lines[0], 'start,count,powerKw_avg,powerKw_max,powerKw_count');
      assert.equal(lines.length, 4);
      lines.slice(1).forEach((line, i) => {
        const [start, count, avg, max, n] = line.split(',');
        assert.equal(start, json[i].start);
        assert.equal(Number(count), json[i].count);
        const p = json[i].powerKw as Record<string, number>;
        assert.equal(Number(avg), p.avg);
        assert.equal(Number(max), p.max);
        assert.equal(Number(n), p.count);
      });
    }
    // Accept is negotiated by quality: CSV only when it is preferred (q = 0 refuses it; a tie keeps JSON).
    for (const [accept, type] of [
      ['text/csv;q=0.9, application/json', 'application/json'],
      ['application/json;q=0.5, text/csv', 'text/csv'],
      ['text/csv;q=0', 'application/json'],
      ['application/json, text/csv', 'application/json'],
      ['text/*', 'application/json'],
      ['TEXT/CSV; charset=utf-8', 'text/csv'],
    ]) {
      const r = await get(nodeId, q, { accept });
      assert.match(String(r.headers['content-type']), new RegExp(`^${type.replace('/', '\\/')}`), accept);
    }
  });

  test('interval=raw returns the readings, paginated by keyset', async () => {
    const lo = iso('2026-11-21T00:00:00Z');
    const hi = iso('2026-11-21T05:00:00Z');
    const expected = readings.filter((r) => r.ts >= lo && r.ts < hi);
    const seen: { timestamp: string; powerKw: number; voltageV?: number; healthStatus?: string }[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await get(nodeId, { from: lo, to: hi, interval: 'raw', limit: 70, cursor });
      assert.equal(r.statusCode, 200, r.body);
      assert.equal(r.headers['x-rollup-tier'], 'raw');
      const body = r.json();
      seen.push(...body.items);
      cursor = body.nextCursor ?? undefined;
      pages++;
      if (pages === 2) {
        // A reading inserted behind the cursor does not shift later pages.
        await writeReadings(t.container.db.pool, nodeId, [{ ts: lo + 1, powerKw: 1 }], interval);
      }
    } while (cursor);
    assert.equal(pages, Math.ceil(expected.length / 70));
    assert.deepEqual(seen.map((s) => Date.parse(s.timestamp)), expected.map((r) => r.ts));
    assert.equal(seen[5].powerKw, expected[5].powerKw);
    assert.equal(seen[5].healthStatus, expected[5].healthStatus);
    // fields restricts the columns; tz gives local offsets; csv works for raw too.
    const f = await get(nodeId, { from: lo + 60_000, to: hi, interval: 'raw', limit: 2, fields: 'frequencyHz', tz: 'Asia/Kolkata' });
    assert.deepEqual(Object.keys(f.json().items[0]).sort(), ['frequencyHz', 'timestamp']);
    assert.match(f.json().items[0].timestamp, /\+05:30$/);
    const c = await get(nodeId, { from: lo, to: hi, interval: 'raw', limit: 3, fields: 'powerKw', format: 'csv' });
    assert.equal(c.body.trim().split('\n').length, 4);
    assert.ok(c.headers['x-next-cursor']);
    readings.push({ ts: lo + 1, powerKw: 1 });
    readings.sort((a, b) => a.ts - b.ts);
    // A cursor belongs to its node (from/to may move): on another node it is a 400.
    await putNode(t, { nodeId: 'raw-other', telemetryIntervalSeconds: 60 });
    const other = await get('raw-other', { from: lo, to: hi, interval: 'raw', limit: 3, cursor: String(c.headers['x-next-cursor']) });
    assert.equal(other.statusCode, 400, other.body);
    assert.equal(other.json().error.code, 'INVALID_CURSOR');
    const later = await get(nodeId, { from: lo + 3_600_000, to: hi, interval: 'raw', limit: 3, cursor: String(c.headers['x-next-cursor']) });
    assert.equal(later.statusCode, 200, later.body);
    assert.equal(Date.parse(later.json().items[0].timestamp), readings.find((r) => r.ts >= lo + 3_600_000)?.ts);
  });

  test('bad inputs: 4xx with the envelope, never 500', async () => {
    const ok = { from: '2026-11-20T00:00:00Z', to: '2026-11-21T00:00:00Z' };
    const cases: [Record<string, string | number | undefined>, number, string][] = [
      [{ to: ok.to }, 400, '/from'],
      [{ from: ok.from }, 400, '/to'],
      [{ ...ok, from: 'yesterday' }, 400, '/from'],
      [{ ...ok, from: '2026-02-30T00:00:00Z' }, 400, '/from'],
      [{ ...ok, to: '2026-11-21T00:00:00' }, 400, '/to'],
      [{ ...ok, to: ok.from }, 400, '/to'],
      [{ ...ok, from: '2026-11-22T00:00:00Z' }, 400, '/to'],
      [{ from: '2024-01-01T00:00:00Z', to: '2026-01-02T00:00:00Z' }, 400, '/to'],
      [{ ...ok, interval: '2h' }, 400, '/interval'],
      [{ ...ok, fields: 'powerKw,bogus' }, 400, '/fields'],
      [{ ...ok, fields: 'healthStatus' }, 400, '/fields'],
      [{ ...ok, fields: '' }, 400, '/fields'],
      [{ ...ok, agg: 'median' }, 400, '/agg'],
      [{ ...ok, agg: 'avg,,max' }, 400, '/agg'],
      [{ ...ok, tz: 'Mars/Olympus' }, 400, '/tz'],
      [{ ...ok, tz: 'america/new_york' }, 400, '/tz'],
      [{ ...ok, tz: 'utc' }, 400, '/tz'],
      [{ ...ok, fill: 'zero' }, 400, '/fill'],
      [{ ...ok, maxGap: -5 }, 400, '/maxGap'],
      [{ ...ok, maxGap: 'long' }, 400, '/maxGap'],
      [{ ...ok, maxGap: '0x10' }, 400, '/maxGap'],
      [{ ...ok, interval: 'raw', limit: ' 5' }, 400, '/limit'],
      [{ ...ok, format: 'xml' }, 400, '/format'],
      [{ ...ok, interval: 'raw', limit: 0 }, 400, '/limit'],
      [{ ...ok, interval: 'raw', limit: 1001 }, 400, '/limit'],
      [{ ...ok, interval: 'raw', cursor: 'not-a-cursor' }, 400, '/cursor'],
      [{ ...ok, interval: 'raw', cursor: Buffer.from('["x"]').toString('base64url') }, 400, '/cursor'],
      [{ ...ok, bogus: 1 }, 400, '/bogus'],
      [{ from: '2025-01-01T00:00:00Z', to: '2026-12-01T00:00:00Z', interval: '1m' }, 400, '/interval'],
    ];
    for (const [params, status, path] of cases) {
      const r = await get(nodeId, params);
      assert.equal(r.statusCode, status, `${JSON.stringify(params)} → ${r.body}`);
      const body = r.json();
      assert.equal(typeof body.error.code, 'string');
      assert.equal(typeof body.error.message, 'string');
      assert.ok(body.error.details.some((d: { path: string }) => d.path === path), `${JSON.stringify(params)}: details ${JSON.stringify(body.error.details)}`);
    }
    const unknown = await get('no-such-node', ok);
    assert.equal(unknown.statusCode, 404);
    assert.equal(unknown.json().error.code, 'NODE_NOT_FOUND');
    const badId = await get('bad%20id', ok);
    assert.equal(badId.statusCode, 400);
    const noKey = await t.request({ method: 'GET', url: `/api/telemetry/${nodeId}/historical?${qs(ok)}`, key: null });
    assert.equal(noKey.statusCode, 401);
    const wrongScope = await t.request({ method: 'GET', url: `/api/telemetry/${nodeId}/historical?${qs(ok)}`, key: KEYS.telemetry });
    assert.equal(wrongScope.statusCode, 403);
  });
});

describe('historical queries across time zones', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ env: KEEP_OLD_DATA });
  });
  after(async () => t?.close());

  const get = (node: string, params: Record<string, string | number | undefined>) =>
    t.request({ method: 'GET', url: `/api/telemetry/${node}/historical?${qs(params)}`, key: KEYS.read });

  test('America/New_York: 23-hour and 25-hour days, hourly buckets through the fall-back hour', async () => {
    const nodeId = 'hq-ny';
    await putNode(t, { nodeId, timezone: 'America/New_York', telemetryIntervalSeconds: 60 });
    const rs: TestReading[] = [];
    const rand = rng(3);
    for (const [a, b] of [['2026-03-07T05:00:00Z', '2026-03-10T04:00:00Z'], ['2026-10-31T04:00:00Z', '2026-11-03T05:00:00Z']]) {
      for (let ts = iso(a); ts < iso(b); ts += 60_000) rs.push({ ts, powerKw: Math.round(rand() * 1000) / 10 });
    }
    await writeReadings(t.container.db.pool, nodeId, rs, 60);
    await t.container.jobs.runNow('rollup-refresh');
    const cap = 180_000;
    const spring = await get(nodeId, { from: '2026-03-07T00:00:00-05:00', to: '2026-03-10T00:00:00-04:00', interval: '1d', tz: 'America/New_York', agg: 'avg,twa,count,sum,min,max,first,last', fill: 'null' });
    assert.equal(spring.statusCode, 200, spring.body);
    const sb = spring.json().buckets as Bucket[];
    assert.deepEqual(sb.map((b) => b.start), ['2026-03-07T00:00:00.000-05:00', '2026-03-08T00:00:00.000-05:00', '2026-03-09T00:00:00.000-04:00']);
    assert.deepEqual(sb.map((b) => b.count), [1440, 1380, 1440]);
    assert.equal(spring.headers['x-rollup-tier'], '8h');
    const fall = await get(nodeId, { from: '2026-10-31T00:00:00-04:00', to: '2026-11-03T00:00:00-05:00', interval: '1d', tz: 'America/New_York', agg: 'avg,twa,count,sum,min,max,first,last', fill: 'null' });
    const fb = fall.json().buckets as Bucket[];
    assert.deepEqual(fb.map((b) => b.start), ['2026-10-31T00:00:00.000-04:00', '2026-11-01T00:00:00.000-04:00', '2026-11-02T00:00:00.000-05:00']);
    assert.deepEqual(fb.map((b) => b.count), [1440, 1500, 1440]);
    const days = [...sb, ...fb];
    const ends = [iso('2026-03-08T05:00:00Z'), iso('2026-03-09T04:00:00Z'), iso('2026-03-10T04:00:00Z'), iso('2026-11-01T04:00:00Z'), iso('2026-11-02T05:00:00Z'), iso('2026-11-03T05:00:00Z')];
    days.forEach((b, i) => {
      const ref = reference(rs, cap, Date.parse(b.start), ends[i]);
      const p = b.powerKw as Record<string, number>;
      for (const a of AGGS) close(p[a], a === 'count' ? ref.count : ref[a], `${b.start} ${a}`);
    });
    const hours = await get(nodeId, { from: '2026-11-01T00:00:00-04:00', to: '2026-11-02T00:00:00-05:00', interval: '1h', tz: 'America/New_York', agg: 'count' });
    const hb = hours.json().buckets as Bucket[];
    assert.equal(hb.length, 25);
    assert.deepEqual(hb.slice(0, 4).map((b) => b.start), ['2026-11-01T00:00:00.000-04:00', '2026-11-01T01:00:00.000-04:00', '2026-11-01T01:00:00.000-05:00', '2026-11-01T02:00:00.000-05:00']);
    assert.ok(hb.every((b) => b.count === 60));
  });

  test('a day the zone skipped has no bucket (Pacific/Apia 2011-12-30); offsets with seconds print as whole minutes', async () => {
    const nodeId = 'apia-1';
    await putNode(t, { nodeId, timezone: 'Pacific/Apia', telemetryIntervalSeconds: 60 });
    const rs: TestReading[] = [];
    for (let ts = iso('2011-12-29T10:00:00Z'); ts < iso('2011-12-31T10:00:00Z'); ts += 60_000) rs.push({ ts, powerKw: 1 });
    await writeReadings(t.container.db.pool, nodeId, rs, 60);
    for (const refreshed of [false, true]) {
      if (refreshed) await t.container.jobs.runNow('rollup-refresh');
      const days = await get(nodeId, { from: '2011-12-29T00:00:00-10:00', to: '2012-01-01T00:00:00+14:00', interval: '1d', tz: 'Pacific/Apia', agg: 'count,sum', fill: 'null' });
      assert.equal(days.statusCode, 200, days.body);
      const db = days.json().buckets as Bucket[];
      assert.deepEqual(db.map((b) => b.start), ['2011-12-29T00:00:00.000-10:00', '2011-12-31T00:00:00.000+14:00']);
      assert.deepEqual(db.map((b) => b.count), [1440, 1440]);
      const weeks = await get(nodeId, { from: '2011-12-26T00:00:00-10:00', to: '2012-01-02T00:00:00+14:00', interval: '1w', tz: 'Pacific/Apia', agg: 'count', fill: 'null' });
      assert.equal(weeks.statusCode, 200, weeks.body);
      assert.deepEqual((weeks.json().buckets as Bucket[]).map((b) => [b.start, b.count]), [['2011-12-26T00:00:00.000-10:00', 2880]]);
    }
    // Africa/Monrovia kept -00:44:30 until 1972: hourly buckets start at local hh:00:00, 44.5 minutes off the UTC hour.
    const mon = await get(nodeId, { from: '1971-06-01T00:00:00Z', to: '1971-06-01T03:00:00Z', interval: '1h', tz: 'Africa/Monrovia', fill: 'null' });
    assert.equal(mon.statusCode, 200, mon.body);
    const mb = mon.json().buckets as Bucket[];
    assert.equal(mb.length, 4);
    for (const b of mb) {
      assert.match(b.start, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$/);
      assert.ok((Date.parse(b.start) - iso('1971-06-01T00:44:30Z')) % 3_600_000 === 0, b.start);
    }
  });

  test('Asia/Kolkata (+05:30) days, weeks and months assemble from 1 h and 15 min rollups', async () => {
    const nodeId = 'hq-kolkata';
    await putNode(t, { nodeId, timezone: 'Asia/Kolkata', telemetryIntervalSeconds: 300 });
    const rs: TestReading[] = [];
    const rand = rng(11);
    for (let ts = iso('2026-05-25T00:00:00Z'); ts < iso('2026-06-09T00:00:00Z'); ts += 300_000) {
      if (rand() < 0.03) continue; // some missing readings
      rs.push({ ts, powerKw: Math.round((rand() - 0.3) * 5000) / 10, voltageV: 230 + rand() });
    }
    await writeReadings(t.container.db.pool, nodeId, rs, 300);
    await t.container.jobs.runNow('rollup-refresh');
    const cap = 900_000;
    const from = iso('2026-05-26T00:00:00+05:30');
    const to = iso('2026-06-08T00:00:00+05:30');
    for (const interval of ['1d', '1w', '1mo', '1h', '30m']) {
      const r = await get(nodeId, { from, to, interval, tz: 'Asia/Kolkata', fields: 'powerKw,voltageV', agg: AGGS.join(','), fill: 'null' });
      assert.equal(r.statusCode, 200, r.body);
      const b = r.json().buckets as Bucket[];
      if (interval === '1d') {
        assert.equal(b.length, 13);
        assert.ok(b.every((x) => /T00:00:00\.000\+05:30$/.test(x.start)));
        // 18:30Z to 18:30Z: two 15-minute buckets at each end, whole hours between (1 h, 4 h, 8 h, 2 h).
        assert.equal(r.headers['x-rollup-tier'], '8h');
        assert.equal(r.headers['x-rollup-sources'], '8h,4h,2h,1h,15m');
      }
      if (interval === '1w') assert.equal(b[0].start, '2026-05-25T00:00:00.000+05:30'); // a Monday
      if (interval === '1h') assert.ok(b.every((x) => /T\d\d:00:00\.000\+05:30$/.test(x.start)));
      checkBuckets(b, rs, cap, from, to, ['powerKw', 'voltageV'], `kolkata ${interval}`);
    }
  });

  test('real data: Sydney household PV (Ausgrid), half-hour slot means equal the published daily pattern', async () => {
    const csv = await readFile('/work/shared/data/ausgrid-solar-home-customer12/data_2011-2012.csv', 'utf8');
    const nodeId = 'ausgrid-12-pv';
    await putNode(t, { nodeId, type: 'solar', capacityKw: 1.04, timezone: 'Australia/Sydney', telemetryIntervalSeconds: 1800 });
    // "As published" (SOURCE.md): every label at a fixed +10:00, each row one 30-minute interval.
    const rs: TestReading[] = csv
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => {
        const [label, , gg] = line.split(',');
        return { ts: Date.parse(`${label.replace(' ', 'T')}+10:00`), powerKw: Number(gg) };
      });
    assert.equal(rs.length, 17568);
    await writeReadings(t.container.db.pool, nodeId, rs, 1800);
    await t.container.jobs.runNow('rollup-refresh');
    // Etc/GMT-10 is the fixed zone UTC+10 (POSIX signs are inverted).
    const r = await get(nodeId, { from: '2011-07-01T00:00:00+10:00', to: '2012-07-01T00:00:00+10:00', interval: '30m', tz: 'Etc/GMT-10', agg: 'avg,twa,count', fill: 'null' });
    assert.equal(r.statusCode, 200, r.body.slice(0, 300));
    assert.equal(r.headers['x-rollup-tier'], '15m');
    const buckets = r.json().buckets as Bucket[];
    assert.equal(buckets.length, 17568);
    const slotSum = new Map<string, number>();
    for (const b of buckets) {
      const p = b.powerKw as { avg: number; twa: number; count: number };
      assert.equal(p.count, 1);
      close(p.twa, p.avg, `${b.start} twa of a held half hour`);
      const hhmm = b.start.slice(11, 16);
      slotSum.set(hhmm, (slotSum.get(hhmm) ?? 0) + p.avg);
    }
    const published = (await readFile('/work/shared/data/ausgrid-solar-home-customer12/daily_pattern_prod_2011-2012.csv', 'utf8')).trim().split('\n').slice(1);
    assert.equal(published.length, 48);
    for (const line of published) {
      const [hour, mean] = line.split(',').map(Number);
      const hhmm = `${String(Math.floor(hour)).padStart(2, '0')}:${hour % 1 ? '30' : '00'}`;
      close((slotSum.get(hhmm) as number) / 366, mean, `slot ${hhmm}`);
    }
    // Yearly energy through the daily buckets equals Σ value × 0.5 h.
    const days = await get(nodeId, { from: '2011-07-01T00:00:00+10:00', to: '2012-07-01T00:00:00+10:00', interval: '1d', tz: 'Etc/GMT-10', agg: 'twa' });
    assert.equal(days.statusCode, 200, days.body);
    assert.equal((days.json().buckets as Bucket[]).length, 366, `${days.headers['x-rollup-sources']} ${days.body.slice(0, 400)}`);
    const kwh = (days.json().buckets as Bucket[]).reduce((s, b) => s + (b.powerKw as { twa: number }).twa * 24, 0);
    close(Math.round(kwh * 1000) / 1000, Math.round(rs.reduce((s, x) => s + x.powerKw * 0.5, 0) * 1000) / 1000, 'yearly kWh');
  });
});
