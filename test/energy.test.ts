import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createTestApp, type TestApp } from './support/app.js';
import {
  calendarPeriods,
  energyByPeriods,
  fixedPeriods,
  formatInZone,
  localDayStart,
  localDays,
  localMonths,
  localWeeks,
  offsetAt,
} from '../src/telemetry/energy.js';
import { RollupRefresher } from '../src/telemetry/rollup-refresher.js';
import { close, holdRefresherLock, putNode, reference, rng, writeReadings, type TestReading } from './telemetry-query-helpers.js';

const H = 3_600_000;
const iso = (s: string) => Date.parse(s);
// The fixtures lie in the past (DST dates, real data of 2011 and 2021): retention must not drop them mid-test.
const KEEP_OLD_DATA = { RETENTION_TELEMETRY_DAYS: '36500', RETENTION_ROLLUP_DAYS: '36500' };

describe('calendar boundaries (buckets.ts)', () => {
  test('America/New_York: 23-hour spring day, 25-hour fall day, local midnights', () => {
    const spring = localDays('America/New_York', '2026-03-07', '2026-03-09');
    assert.deepEqual(spring.map((p) => p.label), ['2026-03-07', '2026-03-08', '2026-03-09']);
    assert.deepEqual(spring.map((p) => (p.end - p.start) / H), [24, 23, 24]);
    assert.equal(spring[1].start, iso('2026-03-08T05:00:00Z'));
    assert.equal(spring[2].start, iso('2026-03-09T04:00:00Z'));
    const fall = localDays('America/New_York', '2026-11-01', '2026-11-01');
    assert.equal(fall[0].start, iso('2026-11-01T04:00:00Z'));
    assert.equal(fall[0].end, iso('2026-11-02T05:00:00Z'));
    assert.equal(formatInZone(fall[0].end, 'America/New_York'), '2026-11-02T00:00:00.000-05:00');
  });

  test('30- and 45-minute offsets: Asia/Kolkata, Australia/Adelaide DST, Asia/Kathmandu', () => {
    assert.equal(localDayStart('Asia/Kolkata', 2026, 1, 15), iso('2026-01-14T18:30:00Z'));
    assert.equal(localDayStart('Asia/Kathmandu', 2026, 1, 15), iso('2026-01-14T18:15:00Z'));
    // Adelaide leaves DST on 2026-04-05 at 03:00 ACDT (+10:30 → +09:30): a 25-hour day.
    const [d] = localDays('Australia/Adelaide', '2026-04-05', '2026-04-05');
    assert.equal(d.start, iso('2026-04-04T13:30:00Z'));
    assert.equal((d.end - d.start) / H, 25);
    // Hourly buckets in Kolkata start at :30 UTC.
    const hours = fixedPeriods('Asia/Kolkata', H, iso('2026-01-01T00:00:00Z'), iso('2026-01-01T03:00:00Z'));
    assert.deepEqual(hours.map((p) => new Date(p.start).toISOString()), ['2025-12-31T23:30:00.000Z', '2026-01-01T00:30:00.000Z', '2026-01-01T01:30:00.000Z', '2026-01-01T02:30:00.000Z']);
  });

  test('weeks start on Monday, months on the 1st, local time', () => {
    const weeks = localWeeks('Europe/Berlin', '2026-03-25', '2026-04-01');
    assert.deepEqual(weeks.map((w) => w.label), ['2026-03-23', '2026-03-30']);
    assert.equal(weeks[0].start, iso('2026-03-22T23:00:00Z'));
    assert.equal((weeks[0].end - weeks[0].start) / H, 167); // contains the spring-forward Sunday
    const months = localMonths('America/New_York', '2026-02', '2026-03');
    assert.deepEqual(months.map((m) => m.label), ['2026-02', '2026-03']);
    assert.equal(months[1].start, iso('2026-03-01T05:00:00Z'));
    assert.equal(months[1].end, iso('2026-04-01T04:00:00Z'));
    assert.equal(new Date(Date.UTC(2026, 2, 23)).getUTCDay(), 1); // the label really is a Monday
  });

  test('a day whose midnight is skipped starts when the clock jumps (America/Santiago)', () => {
    // Chile springs forward at 24:00 → 01:00 on Saturday 2026-09-05.
    const [d] = localDays('America/Santiago', '2026-09-06', '2026-09-06');
    assert.equal(formatInZone(d.start, 'America/Santiago'), '2026-09-06T01:00:00.000-03:00');
    assert.equal((d.end - d.start) / H, 23);
  });

  test('a day a zone skipped whole has no period (Pacific/Apia crossed the date line on 2011-12-29)', () => {
    // Apia went from 2011-12-29 24:00 (-10:00) straight to 2011-12-31 00:00 (+14:00).
    const days = localDays('Pacific/Apia', '2011-12-29', '2011-12-31');
    assert.deepEqual(days.map((d) => d.label), ['2011-12-29', '2011-12-31']);
    assert.equal(days[0].end, iso('2011-12-30T10:00:00Z'));
    assert.equal(days[1].start, days[0].end);
    assert.deepEqual(days.map((d) => (d.end - d.start) / H), [24, 24]);
    assert.deepEqual(localDays('Pacific/Apia', '2011-12-30', '2011-12-30'), []);
    const weeks = calendarPeriods('Pacific/Apia', 'week', iso('2011-12-20T00:00:00Z'), iso('2012-01-10T00:00:00Z'));
    for (let i = 1; i < weeks.length; i++) assert.equal(weeks[i].start, weeks[i - 1].end);
    assert.equal(weeks.find((w) => w.label === '2011-12-26')!.end - weeks.find((w) => w.label === '2011-12-26')!.start, 6 * 24 * H);
    assert.ok(calendarPeriods('Pacific/Apia', 'day', iso('2011-12-25T00:00:00Z'), iso('2012-01-05T00:00:00Z')).every((p) => p.end > p.start));
  });

  test('offsets with seconds are written as RFC 3339 whole-minute offsets naming the same instant', () => {
    // Africa/Monrovia kept -00:44:30 until 1972; America/Juneau was +15:02:19 until 1867-10-19.
    for (const [tz, at] of [['Africa/Monrovia', '1970-06-01T12:00:00.000Z'], ['America/Juneau', '1867-01-01T00:00:00.000Z'], ['Africa/Monrovia', '1971-12-31T23:59:59.999Z']]) {
      const ms = iso(at);
      assert.notEqual(offsetAt(tz, ms) % 60_000, 0, `${tz} has an offset with seconds at ${at}`);
      const text = formatInZone(ms, tz);
      assert.match(text, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$/, text);
      assert.equal(Date.parse(text), ms, text);
      assert.ok(Math.abs(offsetAt(tz, ms) - (Date.parse(text.slice(0, 23) + 'Z') - ms)) <= 30_000, text);
    }
  });

  test('an offset change during the last UTC day of a year is found (Pacific/Kiritimati skipped 1994-12-31)', () => {
    // Kiritimati moved from -10:00 to +14:00 at 1994-12-31T10:00Z: local 1994-12-31 never happened.
    assert.equal(offsetAt('Pacific/Kiritimati', iso('1994-12-31T09:59:59Z')), -10 * H);
    assert.equal(offsetAt('Pacific/Kiritimati', iso('1994-12-31T10:00:00Z')), 14 * H);
    const days = localDays('Pacific/Kiritimati', '1994-12-29', '1995-01-02');
    assert.deepEqual(days.map((p) => p.label), ['1994-12-29', '1994-12-30', '1995-01-01', '1995-01-02']);
    assert.deepEqual(days.map((p) => (p.end - p.start) / H), [24, 24, 24, 24]);
    assert.equal(days[2].start, iso('1994-12-31T10:00:00Z'));
    assert.equal(formatInZone(iso('1994-12-31T10:00:00Z'), 'Pacific/Kiritimati'), '1995-01-01T00:00:00.000+14:00');
  });

  test('a local time past year 9999 keeps its milliseconds and offset', () => {
    assert.equal(formatInZone(Date.parse('9999-12-31T23:00:00Z'), 'Pacific/Kiritimati'), '+010000-01-01T13:00:00.000+14:00');
    assert.equal(formatInZone(Date.parse('9999-12-31T23:00:00Z'), 'UTC'), '9999-12-31T23:00:00.000+00:00');
  });

  test('periods partition the range with no gaps or overlaps', () => {
    for (const tz of ['America/New_York', 'Australia/Lord_Howe', 'Asia/Kolkata', 'Europe/London']) {
      const from = iso('2025-12-30T00:00:00Z');
      const to = iso('2027-01-02T00:00:00Z');
      for (const unit of ['day', 'week', 'month'] as const) {
        const ps = calendarPeriods(tz, unit, from, to);
        assert.ok(ps[0].start <= from && ps[ps.length - 1].end >= to);
        for (let i = 1; i < ps.length; i++) assert.equal(ps[i].start, ps[i - 1].end);
      }
      const days = calendarPeriods(tz, 'day', from, to);
      for (const d of days) {
        // Each day starts at local 00:00 (none of these zones skips midnight).
        assert.match(formatInZone(d.start, tz), /T00:00:00\.000/, `${tz} ${d.label}`);
        assert.ok(Math.abs(offsetAt(tz, d.start)) < 14 * H);
      }
    }
  });

  test('malformed dates are RangeErrors', () => {
    assert.throws(() => localDays('UTC', '2026-02-30', '2026-03-01'), RangeError);
    assert.throws(() => localDays('UTC', '2026-03-02', '2026-03-01'), RangeError);
    assert.throws(() => localMonths('UTC', '2026-13', '2027-01'), RangeError);
  });
});

describe('energy semantics (energy.ts) against PostgreSQL', () => {
  let t: TestApp;
  let refresher: RollupRefresher;
  before(async () => {
    t = await createTestApp({ env: KEEP_OLD_DATA });
    refresher = new RollupRefresher(t.container.db, t.container.nodes, t.container.logger);
  });
  after(async () => t?.close());

  test('New York DST days, a gap longer than the cap, faults, import and export: raw, dirty and refreshed agree with the reference', async () => {
    const nodeId = 'ny-bat-1';
    const interval = 60;
    const cap = 3 * interval * 1000;
    await putNode(t, { nodeId, timezone: 'America/New_York', telemetryIntervalSeconds: interval });
    const rand = rng(7);
    const readings: TestReading[] = [];
    // 2026-11-01 is the 25-hour fall-back day; readings every 60 s (±20 s jitter) over three local days.
    for (let ts = iso('2026-10-31T04:00:00Z'); ts < iso('2026-11-03T05:00:00Z'); ts += 60_000) {
      if (ts >= iso('2026-11-01T10:00:00Z') && ts < iso('2026-11-01T10:47:00Z')) continue; // a 47-minute gap
      const jitter = Math.round((rand() - 0.5) * 40_000);
      readings.push({ ts: ts + jitter, powerKw: Math.round((rand() * 2 - 0.8) * 5000) / 10, healthStatus: rand() < 0.05 ? 'fault' : rand() < 0.03 ? 'offline' : 'ok' });
    }
    const release = await holdRefresherLock(t);
    try {
      await writeReadings(t.container.db.pool, nodeId, readings, interval);
      const days = localDays('America/New_York', '2026-10-31', '2026-11-02');
      assert.deepEqual(days.map((d) => (d.end - d.start) / H), [24, 25, 24]);
      const check = (r: Awaited<ReturnType<typeof energyByPeriods>>) => {
        r.periods.forEach((p, i) => {
          const ref = reference(readings, cap, days[i].start, days[i].end);
          const what = `${days[i].label} (${r.tier})`;
          close(p.energyExportedKwh, ref.exportedKwh, `${what} exported`);
          close(p.energyImportedKwh, ref.importedKwh, `${what} imported`);
          close(p.heldSeconds, ref.heldSeconds, `${what} held`);
          close(p.availableSeconds, ref.availableSeconds, `${what} available`);
          close(p.avgPowerKw, ref.twa, `${what} avg`);
          close(p.minPowerKw, ref.min, `${what} min`);
          close(p.maxPowerKw, ref.max, `${what} max`);
          assert.equal(p.readingCount, ref.readings);
          assert.equal(p.label, days[i].label);
        });
      };
      const before = await energyByPeriods(t.container.db.pool, { nodeId, telemetryIntervalSeconds: interval }, days);
      const { rows } = await t.container.db.pool.query('SELECT count(*)::int AS n FROM telemetry_dirty_buckets WHERE node_id = $1', [nodeId]);
      assert.ok(rows[0].n > 280, 'nothing refreshed yet: the buckets with readings are dirty and answered from raw');
      assert.notEqual(before.tier, '1h');
      check(before);
      // The gap day holds less than 25 h: 47 min without readings minus up to one cap of hold.
      assert.ok(before.periods[1].heldSeconds < 25 * 3600 - 44 * 60);
      const faulty = readings.filter((r) => r.healthStatus !== 'ok').length;
      assert.ok(faulty > 0 && before.periods.some((p) => p.availableSeconds < p.heldSeconds));
      assert.ok(before.periods.every((p) => p.energyImportedKwh > 0 && p.energyExportedKwh > 0));
    } finally {
      await release();
    }
    const run = await refresher.refreshOnce();
    assert.ok(run.buckets > 0);
    const after = await energyByPeriods(t.container.db.pool, { nodeId, telemetryIntervalSeconds: interval }, localDays('America/New_York', '2026-10-31', '2026-11-02'));
    // A New York day (05:00Z to 05:00Z in winter) is 1 h + 2 h + 8 h + 8 h + 4 h + 1 h: whole UTC hours.
    assert.equal(after.tier, '8h', 'New York days start on whole UTC hours');
    const days = localDays('America/New_York', '2026-10-31', '2026-11-02');
    after.periods.forEach((p, i) => {
      const ref = reference(readings, cap, days[i].start, days[i].end);
      close(p.energyExportedKwh, ref.exportedKwh, 'exported after refresh');
      close(p.energyImportedKwh, ref.importedKwh, 'imported after refresh');
      close(p.availableSeconds, ref.availableSeconds, 'available after refresh');
      close(p.avgPowerKw, ref.twa, 'avg after refresh');
      assert.equal(p.firstReadingAt, readings.filter((r) => r.ts >= days[i].start && r.ts < days[i].end)[0].ts);
    });
    // Months assemble the same way.
    const [month] = await energyByPeriods(t.container.db.pool, { nodeId, telemetryIntervalSeconds: interval }, localMonths('America/New_York', '2026-11', '2026-11')).then((r) => r.periods);
    const m = localMonths('America/New_York', '2026-11', '2026-11')[0];
    close(month.energyExportedKwh, reference(readings, cap, m.start, m.end).exportedKwh, 'month exported');
  });

  test('unsorted or overlapping periods are refused', async () => {
    await assert.rejects(energyByPeriods(t.container.db.pool, { nodeId: 'x', telemetryIntervalSeconds: 60 }, [{ start: 10, end: 20 }, { start: 15, end: 30 }]), RangeError);
    await assert.rejects(energyByPeriods(t.container.db.pool, { nodeId: 'x', telemetryIntervalSeconds: 60 }, [{ start: 10, end: 10 }]), RangeError);
  });

  test('real data: GB national demand 2021 across both clock changes equals the publisher\'s settlement-day energy', async () => {
    // NESO assigns each half-hour settlement period to a UK local settlement day (46 periods on
    // 2021-03-28, 50 on 2021-10-31): that assignment is independent of our time-zone code.
    const csv = await readFile('/work/shared/data/neso-historic-demand-2021/demanddata_2021.csv', 'utf8');
    const MON: Record<string, number> = { JAN: 0, FEB: 1, MAR: 2, APR: 3, MAY: 4, JUN: 5, JUL: 6, AUG: 7, SEP: 8, OCT: 9, NOV: 10, DEC: 11 };
    const wanted = new Set(['27-MAR-2021', '28-MAR-2021', '29-MAR-2021', '30-OCT-2021', '31-OCT-2021', '01-NOV-2021']);
    const perDay = new Map<string, { kwh: number; periods: number }>();
    const readings: TestReading[] = [];
    for (const line of csv.trim().split('\n').slice(1)) {
      const cols = line.split(',');
      if (!wanted.has(cols[0])) continue;
      const [dd, mon, yyyy] = cols[0].split('-');
      const p = Number(cols[1]);
      const nd = Number(cols[2]);
      // Period p starts at local midnight + (p − 1) × 30 min of elapsed time (SOURCE.md).
      const midnight = localDayStart('Europe/London', Number(yyyy), MON[mon] + 1, Number(dd));
      readings.push({ ts: midnight + (p - 1) * 1_800_000, powerKw: -nd * 1000, healthStatus: 'ok' });
      const label = `${yyyy}-${String(MON[mon] + 1).padStart(2, '0')}-${dd}`;
      const d = perDay.get(label) ?? { kwh: 0, periods: 0 };
      d.kwh += nd * 1000 * 0.5;
      d.periods++;
      perDay.set(label, d);
    }
    assert.equal(perDay.get('2021-03-28')?.periods, 46);
    assert.equal(perDay.get('2021-10-31')?.periods, 50);
    const nodeId = 'gb-demand';
    await putNode(t, { nodeId, timezone: 'Europe/London', telemetryIntervalSeconds: 1800 });
    await writeReadings(t.container.db.pool, nodeId, readings, 1800);
    await refresher.refreshOnce();
    for (const [first, last] of [['2021-03-28', '2021-03-28'], ['2021-10-31', '2021-10-31']]) {
      const days = localDays('Europe/London', first, last);
      const r = await energyByPeriods(t.container.db.pool, { nodeId, telemetryIntervalSeconds: 1800 }, days);
      const expected = perDay.get(first)!;
      assert.equal(r.periods[0].readingCount, expected.periods);
      // Each period holds 30 min (the next reading comes exactly then), so the day's energy is the publisher's.
      close(r.periods[0].energyImportedKwh, expected.kwh, `${first} imported kWh`);
      assert.equal(r.periods[0].energyExportedKwh, 0);
      assert.equal(r.periods[0].heldSeconds, expected.periods * 1800);
    }
  });
});
