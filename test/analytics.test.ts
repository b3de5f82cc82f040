import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { backends, createTestApp, KEYS, type TestApp } from './support/app.js';
import { close, localDateOf, refDays, refFigures, refMoney, rng, type RefReading, type RefTx } from './analytics-reference.js';

const TZ = 'America/New_York';
const NODE = 'ny-bat-1';
const CAP_KW = 100;
const INTERVAL_S = 60;
const MIN = 60_000;
const iso = (ms: number) => new Date(ms).toISOString();

interface Row {
  date: string;
  hours: number;
  energyExportedKwh: number;
  energyImportedKwh: number;
  avgPowerKw: number | null;
  peakPowerKw: number | null;
  minPowerKw: number | null;
  capacityFactor: number;
  availabilityPct: number;
  completenessPct: number;
  readingCount: number;
  dispatchCount: number;
  revenueEur: number;
  costEur: number;
}

function node(nodeId: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { nodeId, name: nodeId, type: 'battery', status: 'active', capacityKw: CAP_KW, timezone: TZ, telemetryIntervalSeconds: INTERVAL_S, ...extra };
}

/**
 * Minute readings over [from, to) with a day/night swing between export and import, a
 * fault stretch, irregular extra readings, and a 2.5-hour silence (longer than the 180 s cap).
 */
function profile(from: number, to: number, seed: number, gap: [number, number]): RefReading[] {
  const rand = rng(seed);
  const out: RefReading[] = [];
  for (let t = from; t < to; t += MIN) {
    if (t >= gap[0] && t < gap[1]) continue;
    const phase = ((t / 3_600_000) % 24) / 24;
    const powerKw = Math.round((80 * Math.sin(2 * Math.PI * phase) + 10 * (rand() - 0.5)) * 1000) / 1000;
    const hour = new Date(t).getUTCHours();
    out.push({ ts: t, powerKw, healthStatus: hour === 7 ? 'fault' : hour === 8 && rand() < 0.3 ? 'offline' : 'ok' });
    if (rand() < 0.05) out.push({ ts: t + 17_000, powerKw: powerKw + 1, healthStatus: 'warning' });
  }
  return out;
}

describe('analytics: per-node daily and monthly', () => {
  for (const backend of backends()) {
    describe(`backend ${backend}`, () => {
      let t: TestApp;
      const readings: RefReading[] = [];
      const txs: RefTx[] = [];

      const get = (url: string, key: string | null = KEYS.read) => t.request({ method: 'GET', url, key });
      const postReadings = async (rs: readonly RefReading[]) => {
        for (let i = 0; i < rs.length; i += 5000) {
          const batch = rs.slice(i, i + 5000).map((r) => ({ nodeId: NODE, timestamp: iso(r.ts), powerKw: r.powerKw, ...(r.healthStatus ? { healthStatus: r.healthStatus } : {}) }));
          const res = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: { readings: batch }, key: KEYS.telemetry });
          assert.equal(res.statusCode, 200, res.body);
          assert.equal(res.json().rejected.length, 0, res.body);
        }
        for (const r of rs) {
          const i = readings.findIndex((x) => x.ts === r.ts);
          if (i >= 0) readings[i] = r;
          else readings.push(r);
        }
      };
      const postTx = async (body: Record<string, unknown>): Promise<RefTx> => {
        const res = await t.request({ method: 'POST', url: '/api/transactions', payload: { nodeId: NODE, ...body }, key: KEYS.transactions });
        assert.equal(res.statusCode, 201, res.body);
        const r = res.json();
        const rec: RefTx = { id: r.id, sequence: r.sequence, type: r.type, status: r.status, timestamp: r.timestamp, amountEur: r.amountEur, relatesTo: r.relatesTo };
        txs.push(rec);
        return rec;
      };

      /** Checks every row against the reference over the raw readings and transactions. */
      const checkDays = (rows: Row[], first: string, last: string) => {
        const days = refDays(first, last, TZ);
        assert.deepEqual(rows.map((r) => r.date), days.map((d) => d.date));
        const money = refMoney(txs, TZ);
        rows.forEach((row, i) => {
          const d = days[i];
          const f = refFigures(readings, d.start, d.end, 3 * INTERVAL_S);
          const hours = (d.end - d.start) / 3_600_000;
          const secs = (d.end - d.start) / 1000;
          const what = `${row.date}`;
          assert.equal(row.hours, hours, what);
          close(row.energyExportedKwh, f.exportedKwh, `${what} exported`);
          close(row.energyImportedKwh, f.importedKwh, `${what} imported`);
          close(row.avgPowerKw, f.heldS > 0 ? f.integral / f.heldS : null, `${what} avg`);
          assert.equal(row.peakPowerKw, f.max, `${what} peak`);
          assert.equal(row.minPowerKw, f.min, `${what} min`);
          close(row.capacityFactor, f.exportedKwh / (CAP_KW * hours), `${what} capacity factor`);
          close(row.availabilityPct, (100 * f.availableS) / secs, `${what} availability`);
          close(row.completenessPct, Math.min(100, (100 * f.count) / (secs / INTERVAL_S)), `${what} completeness`);
          assert.equal(row.readingCount, f.count, `${what} count`);
          const m = money.get(row.date) ?? { revenue: 0, cost: 0, dispatches: 0 };
          close(row.revenueEur, m.revenue, `${what} revenue`);
          close(row.costEur, m.cost, `${what} cost`);
          assert.equal(row.dispatchCount, m.dispatches, `${what} dispatches`);
        });
      };

      before(async () => {
        t = await createTestApp({ backend, env: { RETENTION_TELEMETRY_DAYS: '3650', RETENTION_ROLLUP_DAYS: '3650' } });
        const r = await t.request({ method: 'POST', url: '/api/metadata', payload: node(NODE), key: KEYS.metadata });
        assert.equal(r.statusCode, 201, r.body);
        // Spring forward (2026-03-08, 23 h) and fall back (2026-11-01, 25 h), local days around them.
        await postReadings(profile(Date.parse('2026-03-07T04:00:00Z'), Date.parse('2026-03-10T05:00:00Z'), 1, [Date.parse('2026-03-09T15:00:00Z'), Date.parse('2026-03-09T17:30:00Z')]));
        await postReadings(profile(Date.parse('2026-10-31T03:00:00Z'), Date.parse('2026-11-03T06:00:00Z'), 2, [Date.parse('2026-11-02T15:00:00Z'), Date.parse('2026-11-02T17:30:00Z')]));

        // Settlements on both sides of local midnights (EDT before 2026-11-01 06:00Z, EST after).
        await postTx({ type: 'settlement', timestamp: '2026-11-01T03:59:59Z', amountEur: 50, status: 'settled' }); // 10-31 23:59:59 EDT
        await postTx({ type: 'settlement', timestamp: '2026-11-01T04:00:00Z', amountEur: -20, status: 'settled' }); // 11-01 00:00 EDT
        await postTx({ type: 'settlement', timestamp: '2026-11-02T04:30:00Z', amountEur: 30, status: 'confirmed' }); // 11-01 23:30 EST
        await postTx({ type: 'settlement', timestamp: '2026-11-02T05:00:00Z', amountEur: 7.5, status: 'confirmed' }); // 11-02 00:00 EST
        // A corrected settlement: the correction, dated the next day, replaces the amount on the original's day.
        const s1 = await postTx({ type: 'settlement', timestamp: '2026-11-02T12:00:00Z', amountEur: 100, status: 'confirmed' });
        await postTx({ type: 'settlement', timestamp: '2026-11-03T12:00:00Z', amountEur: 80, status: 'settled', relatesTo: s1.id });
        // A rejected settlement counts nothing; a status-only follow-up keeps the last amount.
        await postTx({ type: 'settlement', timestamp: '2026-11-02T13:00:00Z', amountEur: 999, status: 'rejected' });
        const s2 = await postTx({ type: 'settlement', timestamp: '2026-10-31T10:00:00Z', amountEur: -12.25, status: 'pending' });
        await postTx({ type: 'settlement', timestamp: '2026-10-31T11:00:00Z', status: 'settled', relatesTo: s2.id });
        // Dispatches: three on 11-01 local, one later failed; a bid is no dispatch.
        await postTx({ type: 'dispatch', timestamp: '2026-11-01T05:00:00Z', powerKw: 50, status: 'confirmed' });
        const d2 = await postTx({ type: 'dispatch', timestamp: '2026-11-01T12:00:00Z', powerKw: 50, status: 'accepted' });
        await postTx({ type: 'dispatch', timestamp: '2026-11-01T13:00:00Z', status: 'failed', relatesTo: d2.id });
        await postTx({ type: 'dispatch', timestamp: '2026-11-02T04:59:00Z', powerKw: -30, status: 'confirmed' }); // 11-01 23:59 EST
        await postTx({ type: 'bid', timestamp: '2026-11-01T14:00:00Z', powerKw: 50, status: 'pending' });
        // Spring day money too.
        await postTx({ type: 'settlement', timestamp: '2026-03-08T04:59:00Z', amountEur: 11, status: 'settled' }); // 03-07 23:59 EST
        await postTx({ type: 'settlement', timestamp: '2026-03-09T03:59:00Z', amountEur: 13, status: 'settled' }); // 03-08 23:59 EDT
      });
      after(async () => t?.close());

      test('fall-back week: 25-hour day, energy, capacity factor with real hours, money near local midnight', async () => {
        const r = await get(`/api/analytics/${NODE}/daily?from=2026-10-31&to=2026-11-03`);
        assert.equal(r.statusCode, 200, r.body);
        const body = r.json() as { tz: string; days: Row[] };
        assert.equal(body.tz, TZ);
        assert.deepEqual(body.days.map((d) => d.hours), [24, 25, 24, 24]);
        checkDays(body.days, '2026-10-31', '2026-11-03');
        const [oct31, nov1, nov2] = body.days;
        assert.equal(oct31.revenueEur, 50);
        assert.equal(oct31.costEur, 12.25);
        assert.equal(nov1.revenueEur, 30);
        assert.equal(nov1.costEur, 20);
        assert.equal(nov1.dispatchCount, 2); // three dispatches, one of them failed later
        assert.equal(nov2.revenueEur, 87.5);
        // The silence on 11-02 is missing time: availability and completeness drop, no energy is invented.
        assert.ok(nov2.availabilityPct < 90 && nov2.completenessPct < 95, JSON.stringify(nov2));
        assert.ok(nov1.completenessPct > nov2.completenessPct);
      });

      test('spring-forward: the 23-hour day', async () => {
        const r = await get(`/api/analytics/${NODE}/daily?from=2026-03-07&to=2026-03-09`);
        assert.equal(r.statusCode, 200, r.body);
        const days = (r.json() as { days: Row[] }).days;
        assert.deepEqual(days.map((d) => d.hours), [24, 23, 24]);
        checkDays(days, '2026-03-07', '2026-03-09');
        assert.equal(days[0].revenueEur, 11);
        assert.equal(days[1].revenueEur, 13);
      });

      test('tz overrides the node timezone', async () => {
        const r = await get(`/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02&tz=UTC`);
        assert.equal(r.statusCode, 200, r.body);
        const body = r.json() as { tz: string; days: Row[] };
        assert.equal(body.tz, 'UTC');
        assert.deepEqual(body.days.map((d) => d.hours), [24, 24]);
        const f = refFigures(readings, Date.parse('2026-11-01T00:00:00Z'), Date.parse('2026-11-02T00:00:00Z'), 3 * INTERVAL_S);
        close(body.days[0].energyExportedKwh, f.exportedKwh, 'UTC day exported');
        assert.equal(body.days[0].revenueEur, 50 + 0); // 03:59:59Z and 04:00Z fall on 11-01 UTC
        assert.equal(body.days[0].costEur, 20);
      });

      test('rollups and raw readings give the same answers', async () => {
        const before = (await get(`/api/analytics/${NODE}/daily?from=2026-10-31&to=2026-11-03`)).json() as { days: Row[] };
        const status = await t.container.jobs.runNow('rollup-refresh');
        assert.notEqual(status.outcome, 'error', JSON.stringify(status));
        const { rows } = await t.container.db.pool.query('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1', [NODE]);
        assert.equal(rows[0].n, 0, 'the refresher cleared every mark');
        const after = (await get(`/api/analytics/${NODE}/daily?from=2026-10-31&to=2026-11-03`)).json() as { days: Row[] };
        checkDays(after.days, '2026-10-31', '2026-11-03');
        before.days.forEach((b, i) => {
          close(after.days[i].energyExportedKwh, b.energyExportedKwh, 'exported');
          close(after.days[i].availabilityPct, b.availabilityPct, 'availability');
          assert.equal(after.days[i].readingCount, b.readingCount);
        });
      });

      test('monthly equals the combination of its days', async () => {
        const m = await get(`/api/analytics/${NODE}/monthly?from=2026-10&to=2026-11`);
        assert.equal(m.statusCode, 200, m.body);
        const months = (m.json() as { months: Row[] }).months;
        assert.deepEqual(months.map((x) => x.date), ['2026-10', '2026-11']);
        const d = await get(`/api/analytics/${NODE}/daily?from=2026-10-01&to=2026-11-30`);
        const days = (d.json() as { days: Row[] }).days;
        checkDays(days, '2026-10-01', '2026-11-30');
        for (const month of months) {
          const mine = days.filter((x) => x.date.startsWith(month.date));
          const hours = mine.reduce((s, x) => s + x.hours, 0);
          assert.equal(month.hours, hours);
          const sum = (k: keyof Row) => mine.reduce((s, x) => s + (x[k] as number), 0);
          const tw = (k: keyof Row) => mine.reduce((s, x) => s + (x[k] as number) * x.hours, 0) / hours;
          for (const k of ['energyExportedKwh', 'energyImportedKwh', 'revenueEur', 'costEur'] as const) close(month[k], sum(k), `${month.date} ${k}`);
          for (const k of ['dispatchCount', 'readingCount'] as const) assert.equal(month[k], sum(k), `${month.date} ${k}`);
          for (const k of ['capacityFactor', 'availabilityPct', 'completenessPct'] as const) close(month[k], tw(k), `${month.date} ${k}`);
          const peaks = mine.map((x) => x.peakPowerKw).filter((x): x is number => x !== null);
          const mins = mine.map((x) => x.minPowerKw).filter((x): x is number => x !== null);
          assert.equal(month.peakPowerKw, Math.max(...peaks));
          assert.equal(month.minPowerKw, Math.min(...mins));
        }
        // October has the 25-hour day? No: 2026-11-01 is in November, so November has 30 × 24 + 1 hours.
        assert.equal(months[1].hours, 30 * 24 + 1);
      });

      test('cached answers follow late telemetry and new settlements at once', async () => {
        const url = `/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02`;
        const counter = async (result: string) => {
          const m = await t.container.metrics.registry.getSingleMetric('cache_requests_total')?.get();
          return m?.values.find((v) => v.labels.cache === 'analytics' && v.labels.result === result)?.value ?? 0;
        };
        const first = (await get(url)).json() as { days: Row[] };
        const hits = await counter('hit');
        const misses = await counter('miss');
        const again = (await get(url)).json() as { days: Row[] };
        assert.deepEqual(again, first);
        assert.equal(await counter('hit'), hits + 1, 'the repeat is a cache hit');
        assert.equal(await counter('miss'), misses);

        // Late readings inside the 11-02 silence (local 10:00–12:30 EST).
        const late: RefReading[] = [];
        for (let ts = Date.parse('2026-11-02T15:30:00Z'); ts < Date.parse('2026-11-02T16:00:00Z'); ts += MIN) late.push({ ts, powerKw: 95, healthStatus: 'ok' });
        await postReadings(late);
        const afterLate = (await get(url)).json() as { days: Row[] };
        assert.ok(afterLate.days[1].energyExportedKwh > first.days[1].energyExportedKwh + 40, 'the late half hour at 95 kW shows');
        checkDays(afterLate.days, '2026-11-01', '2026-11-02');
        assert.equal(await counter('miss'), misses + 1);

        // A correction of a stored reading (same key, new value) is also seen.
        await postReadings([{ ts: Date.parse('2026-11-01T12:00:00Z'), powerKw: -90, healthStatus: 'ok' }]);
        const afterFix = (await get(url)).json() as { days: Row[] };
        checkDays(afterFix.days, '2026-11-01', '2026-11-02');
        assert.notEqual(afterFix.days[0].energyImportedKwh, afterLate.days[0].energyImportedKwh);

        // A new settlement on 11-02 local.
        await postTx({ type: 'settlement', timestamp: '2026-11-02T20:00:00Z', amountEur: 42, status: 'settled' });
        const afterTx = (await get(url)).json() as { days: Row[] };
        assert.equal(afterTx.days[1].revenueEur, afterFix.days[1].revenueEur + 42);
        checkDays(afterTx.days, '2026-11-01', '2026-11-02');
        // A correction dated outside the cached range still changes the original day.
        const s = txs.find((x) => x.amountEur === 42) as RefTx;
        await postTx({ type: 'settlement', timestamp: '2026-11-20T20:00:00Z', amountEur: 40, status: 'settled', relatesTo: s.id });
        const afterCorrection = (await get(url)).json() as { days: Row[] };
        assert.equal(afterCorrection.days[1].revenueEur, afterFix.days[1].revenueEur + 40);
        checkDays(afterCorrection.days, '2026-11-01', '2026-11-02');
      });

      test('after the refresher clears a write\'s marks, the answer from before the write is not served again', async () => {
        const url = `/api/analytics/${NODE}/daily?from=2026-03-09&to=2026-03-09`;
        await t.container.jobs.runNow('rollup-refresh');
        const before = (await get(url)).json() as { days: Row[] };
        const gens = async () => {
          const counters = await t.container.cache.hashGet('analytics:genh:2026-03', NODE);
          return counters;
        };
        const g0 = await gens();
        // Inside the 2026-03-09 silence (15:00–17:30 UTC).
        await postReadings([{ ts: Date.parse('2026-03-09T16:00:00Z'), powerKw: 99, healthStatus: 'ok' }]);
        for (let i = 0; i < 100 && (await gens()) === g0; i++) await new Promise((r) => setTimeout(r, 20));
        assert.notEqual(await gens(), g0, 'telemetry.changed moved the month\'s generation on');
        await t.container.jobs.runNow('rollup-refresh');
        const { rows } = await t.container.db.pool.query('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1', [NODE]);
        assert.equal(rows[0].n, 0);
        const after = (await get(url)).json() as { days: Row[] };
        assert.ok(after.days[0].energyExportedKwh > before.days[0].energyExportedKwh, 'the new reading counts');
        checkDays(after.days, '2026-03-09', '2026-03-09');
      });

      test('closed periods stay cached across refreshes and writes elsewhere', async () => {
        const url = `/api/analytics/${NODE}/daily?from=2026-03-07&to=2026-03-08`;
        const hitCount = async () => {
          const m = await t.container.metrics.registry.getSingleMetric('cache_requests_total')?.get();
          return m?.values.find((v) => v.labels.cache === 'analytics' && v.labels.result === 'hit')?.value ?? 0;
        };
        const first = (await get(url)).json();
        await postReadings([{ ts: Date.parse('2026-11-02T16:10:00Z'), powerKw: 12, healthStatus: 'ok' }]);
        await t.container.jobs.runNow('rollup-refresh');
        const hits = await hitCount();
        assert.deepEqual((await get(url)).json(), first);
        assert.equal(await hitCount(), hits + 1, 'a write in November does not evict March');
      });

      if (backend === 'redis') {
        test('a second instance on the same Redis serves the first one\'s entries and sees writes made through it', async () => {
          const b = await createTestApp({ backend, databaseUrl: t.databaseUrl, keyPrefix: t.keyPrefix, env: { RETENTION_TELEMETRY_DAYS: '3650', RETENTION_ROLLUP_DAYS: '3650' } });
          try {
            const url = `/api/analytics/${NODE}/daily?from=2026-10-31&to=2026-10-31`;
            const a1 = (await get(url)).json() as { days: Row[] };
            const hitsB = async () => {
              const m = await b.container.metrics.registry.getSingleMetric('cache_requests_total')?.get();
              return m?.values.find((v) => v.labels.cache === 'analytics' && v.labels.result === 'hit')?.value ?? 0;
            };
            const h0 = await hitsB();
            const b1 = await b.request({ method: 'GET', url, key: KEYS.read });
            assert.deepEqual(b1.json(), a1);
            assert.equal(await hitsB(), h0 + 1, 'B answered from A\'s entry');
            const res = await b.request({ method: 'POST', url: '/api/transactions', payload: { nodeId: NODE, type: 'settlement', timestamp: '2026-10-31T16:00:00Z', amountEur: 5, status: 'settled' }, key: KEYS.transactions });
            assert.equal(res.statusCode, 201, res.body);
            const r = res.json();
            txs.push({ id: r.id, sequence: r.sequence, type: r.type, status: r.status, timestamp: r.timestamp, amountEur: r.amountEur, relatesTo: r.relatesTo });
            const a2 = (await get(url)).json() as { days: Row[] };
            assert.equal(a2.days[0].revenueEur, a1.days[0].revenueEur + 5);
            checkDays(a2.days, '2026-10-31', '2026-10-31');
          } finally {
            await b.close();
          }
        });
      }

      test('a date the zone skipped has no row; offsets with seconds are written as whole minutes', async () => {
        // Pacific/Apia went from 2011-12-29 24:00 (-10:00) to 2011-12-31 00:00 (+14:00).
        const r = await get(`/api/analytics/${NODE}/daily?from=2011-12-29&to=2011-12-31&tz=Pacific/Apia`);
        assert.equal(r.statusCode, 200, r.body);
        const days = (r.json() as { days: (Row & { start: string; end: string })[] }).days;
        assert.deepEqual(days.map((d) => d.date), ['2011-12-29', '2011-12-31']);
        assert.deepEqual(days.map((d) => d.hours), [24, 24]);
        assert.deepEqual([days[0].start, days[0].end, days[1].start], ['2011-12-29T00:00:00.000-10:00', '2011-12-31T00:00:00.000+14:00', '2011-12-31T00:00:00.000+14:00']);
        const none = await get(`/api/analytics/${NODE}/daily?from=2011-12-30&to=2011-12-30&tz=Pacific/Apia`);
        assert.equal(none.statusCode, 200, none.body);
        assert.deepEqual(none.json().days, []);
        const month = await get(`/api/analytics/${NODE}/monthly?from=2011-11&to=2012-01&tz=Pacific/Apia`);
        assert.equal(month.statusCode, 200, month.body);
        assert.deepEqual((month.json() as { months: Row[] }).months.map((m) => m.hours), [30 * 24, 30 * 24, 31 * 24]);
        const bench = await get(`/api/analytics/${NODE}/benchmarks?from=2011-12-30&to=2011-12-30&tz=Pacific/Apia`);
        assert.equal(bench.statusCode, 400, bench.body);
        assert.equal(bench.json().error.code, 'INVALID_DATE');
        // Africa/Monrovia kept -00:44:30 until 1972: RFC 3339 has whole-minute offsets only.
        const mon = await get(`/api/analytics/${NODE}/daily?from=1971-06-01&to=1971-06-01&tz=Africa/Monrovia`);
        assert.equal(mon.statusCode, 200, mon.body);
        const [d] = (mon.json() as { days: { start: string; end: string }[] }).days;
        for (const text of [d.start, d.end]) assert.match(text, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$/);
        assert.equal(Date.parse(d.start), Date.parse('1971-06-01T00:44:30Z'));
        assert.equal(Date.parse(d.end) - Date.parse(d.start), 24 * 3_600_000);
      });

      test('bad inputs get the error envelope with 4xx, never 500', async () => {
        const cases: [string, number, string | null][] = [
          [`/api/analytics/${NODE}/daily?from=2026-13-01&to=2026-12-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-02-30&to=2026-03-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-11-05&to=2026-11-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2025-01-01&to=2026-01-02`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-11-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02&tz=Mars/Olympus`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02&tz=america/new_york`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=2026-11&to=2026-11&tz=utc`, 400, KEYS.read],
          [`/api/analytics/${NODE}/benchmarks?from=2026-11-01&to=2026-11-02&tz=EUROPE/BERLIN`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02&bogus=1`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=20261101&to=2026-11-02`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=2026-1&to=2026-02`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=2026-05&to=2026-04`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=2024-01&to=2026-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=2026-00&to=2026-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=0000-01&to=0000-02`, 400, KEYS.read],
          [`/api/analytics/${NODE}/monthly?from=9999-11&to=9999-12`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=9999-12-30&to=9999-12-31`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=1969-12-31&to=1970-01-01`, 400, KEYS.read],
          [`/api/analytics/${NODE}/benchmarks?from=0001-01-01&to=0001-01-02`, 400, KEYS.read],
          [`/api/analytics/portfolio?from=9999-12-30&to=9999-12-31`, 400, KEYS.read],
          [`/api/analytics/no-such-node/daily?from=2026-11-01&to=2026-11-02`, 404, KEYS.read],
          [`/api/analytics/no-such-node/monthly?from=2026-11&to=2026-11`, 404, KEYS.read],
          [`/api/analytics/${encodeURIComponent('bad id!')}/daily?from=2026-11-01&to=2026-11-02`, 400, KEYS.read],
          [`/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02`, 401, null],
          [`/api/analytics/${NODE}/daily?from=2026-11-01&to=2026-11-02`, 403, KEYS.telemetry],
        ];
        for (const [url, status, key] of cases) {
          const r = await get(url, key);
          assert.equal(r.statusCode, status, `${url}: ${r.body}`);
          const e = r.json().error;
          assert.equal(typeof e.code, 'string', url);
          assert.equal(typeof e.message, 'string', url);
          assert.ok(Array.isArray(e.details), url);
        }
        // 366 days is the bound, inclusive.
        const ok = await get(`/api/analytics/${NODE}/daily?from=2026-01-01&to=2027-01-01`);
        assert.equal(ok.statusCode, 200, ok.body);
        assert.equal((ok.json() as { days: Row[] }).days.length, 366);
        assert.equal(localDateOf(Date.parse('2026-11-02T04:30:00Z'), TZ), '2026-11-01');
      });
    });
  }
});
