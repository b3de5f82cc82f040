import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createTestApp, KEYS, type TestApp } from './support/app.js';

const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;

interface Row {
  ts: number;
  flags?: number;
}

/** Ingestion's counters of one reading key (telemetry_quality_keys). */
interface KeyCounter {
  nodeId: string;
  ts: number;
  duplicates: number;
  corrected: number;
}

interface Report {
  nodeId: string;
  from: string;
  to: string;
  intervalSeconds: number;
  expected: number;
  received: number;
  completenessPct: number;
  duplicates: number;
  corrected: number;
  outOfRange: number;
  late: number;
  gaps: { start: string; end: string; missing: number }[];
  gapCount: number;
  lastReadingAt: string | null;
  stale: boolean;
  score: number;
}

async function addNode(t: TestApp, nodeId: string, intervalSeconds: number, capacityKw = 100): Promise<void> {
  await t.container.db.pool.query(
    `INSERT INTO nodes (node_id, type, status, capacity_kw, telemetry_interval_seconds, doc) VALUES ($1, 'solar', 'active', $2, $3, $4)`,
    [nodeId, capacityKw, intervalSeconds, JSON.stringify({ nodeId })],
  );
  await t.container.nodes.reloadAll();
}

async function insertRows(t: TestApp, nodeId: string, rows: Row[]): Promise<void> {
  if (!rows.length) return;
  const pool = t.container.db.pool;
  const tss = rows.map((r) => r.ts);
  await pool.query(
    `SELECT ensure_telemetry_partition(d::date) FROM generate_series(($1::timestamptz AT TIME ZONE 'UTC')::date, ($2::timestamptz AT TIME ZONE 'UTC')::date, '1 day') d`,
    [new Date(Math.min(...tss)).toISOString(), new Date(Math.max(...tss)).toISOString()],
  );
  await pool.query(
    `INSERT INTO telemetry (node_id, ts, power_kw, flags)
     SELECT $1, to_timestamp(t / 1000.0), 1.5, f FROM unnest($2::float8[], $3::int2[]) AS u(t, f)`,
    [nodeId, tss, rows.map((r) => r.flags ?? 0)],
  );
}

async function insertKeys(t: TestApp, counters: KeyCounter[]): Promise<void> {
  for (const c of counters) {
    await t.container.db.pool.query('INSERT INTO telemetry_quality_keys (node_id, ts, duplicates, corrected) VALUES ($1, $2, $3, $4)', [c.nodeId, new Date(c.ts), c.duplicates, c.corrected]);
  }
}

/**
 * The reference: the documented rules, computed by walking the readings and counting slots one by
 * one (no closed forms), independent of the service's SQL and arithmetic.
 */
function reference(args: { rows: Row[]; allRows?: Row[]; from: number; to: number; now: number; intervalSeconds: number; keys: KeyCounter[]; nodeId: string }) {
  const I = args.intervalSeconds * 1000;
  const tol = 1.5 * I;
  const end = Math.min(args.to, args.now);
  const inRange = args.rows.filter((r) => r.ts >= args.from && r.ts < args.to).sort((a, b) => a.ts - b.ts);
  let expected = 0;
  for (let k = Math.floor(args.from / I) - 1; k * I < end; k++) if (k * I >= args.from) expected++;
  const received = inRange.length;
  const gaps: { start: number; end: number; missing: number }[] = [];
  const count = (pred: (k: number) => boolean) => {
    let n = 0;
    for (let k = 1; pred(k); k++) n++;
    return n;
  };
  if (!inRange.length) {
    if (end - args.from > tol) gaps.push({ start: args.from, end, missing: expected });
  } else {
    const first = inRange[0].ts;
    if (first - args.from > tol) gaps.push({ start: args.from, end: first, missing: count((k) => first - k * I >= args.from) });
    for (let i = 1; i < inRange.length; i++) {
      const a = inRange[i - 1].ts;
      const b = inRange[i].ts;
      // A silence that runs past now (a reading stamped ahead of the clock ends it): only its slots before now are missing yet.
      if (b - a > tol) gaps.push({ start: a, end: b, missing: count((k) => a + k * I < Math.min(b, end)) });
    }
    const last = inRange[inRange.length - 1].ts;
    if (end - last > tol) gaps.push({ start: last, end, missing: count((k) => last + k * I < end) });
  }
  const keys = args.keys.filter((k) => k.nodeId === args.nodeId && k.ts >= args.from && k.ts < args.to);
  const duplicates = keys.reduce((s, k) => s + k.duplicates, 0);
  const corrected = keys.reduce((s, k) => s + k.corrected, 0);
  const outOfRange = inRange.filter((r) => ((r.flags ?? 0) & 1) === 1).length;
  const late = inRange.filter((r) => ((r.flags ?? 0) & 2) === 2).length;
  const all = args.allRows ?? args.rows;
  const newest = all.length ? Math.max(...all.map((r) => r.ts)) : null;
  const c = expected === 0 ? 1 : Math.min(1, received / expected);
  const share = (n: number, of: number) => (of === 0 ? 0 : Math.min(1, n / of));
  const score = Math.round(100 * c * (1 - 0.5 * share(outOfRange, received)) * (1 - 0.25 * share(late, received)) * (1 - 0.25 * share(duplicates + corrected, received + duplicates + corrected)));
  return {
    expected,
    received,
    completenessPct: Math.round(c * 10000) / 100,
    duplicates,
    corrected,
    outOfRange,
    late,
    gaps: gaps.map((g) => ({ start: new Date(g.start).toISOString(), end: new Date(g.end).toISOString(), missing: g.missing })),
    gapCount: gaps.length,
    lastReadingAt: newest === null ? null : new Date(newest).toISOString(),
    stale: newest === null || args.now - newest > 3 * I,
    score,
  };
}

function pick(r: Report) {
  const { expected, received, completenessPct, duplicates, corrected, outOfRange, late, gaps, gapCount, lastReadingAt, stale, score } = r;
  return { expected, received, completenessPct, duplicates, corrected, outOfRange, late, gaps, gapCount, lastReadingAt, stale, score };
}

describe('data quality', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());

  const quality = async (nodeId: string, qs: string, key: string | null = KEYS.read) => t.request({ method: 'GET', url: `/api/data-quality/${nodeId}${qs ? `?${qs}` : ''}`, key });

  test('a crafted series: leading, interior and trailing gaps, jitter inside the tolerance, flags, per-day counters', async () => {
    await addNode(t, 'q-1', 60);
    const from = Date.UTC(2026, 10, 1, 23, 0); // crosses a UTC midnight: two partitions, two counter days
    const to = from + 2 * HOUR;
    const rows: Row[] = [];
    const at = (m: number, s = 0) => from + m * MIN + s * 1000;
    for (let m = 5; m <= 20; m++) rows.push({ ts: at(m) }); // 5 min silent at the start
    rows.push({ ts: at(21, 20) }); // 80 s after the last: inside the 1.5 × 60 s tolerance
    rows.push({ ts: at(22) });
    rows.push({ ts: at(23, 30) }); // exactly 90 s: not a gap (strictly longer is)
    rows.push({ ts: at(24, 30) });
    rows.push({ ts: at(26, 1) }); // 91 s: a gap, 1 missing
    for (let m = 27; m <= 59; m++) rows.push({ ts: at(m) });
    for (let m = 90; m <= 109; m++) rows.push({ ts: at(m) }); // 31 min silent: 30 missing
    // 11 min silent before the end: 10 missing
    const flagsAt: Record<number, number> = { 5: 1, 6: 1, 30: 1, 31: 2, 32: 2, 33: 2, 40: 2, 70: 3 };
    rows.forEach((r, i) => (r.flags = flagsAt[i] ?? 0));
    const outside: Row[] = [{ ts: from - MIN }, { ts: to }, { ts: to + 3 * DAY }];
    await insertRows(t, 'q-1', [...rows, ...outside]);
    await addNode(t, 'q-other', 60);
    await insertRows(t, 'q-other', [{ ts: at(1), flags: 3 }, { ts: at(2) }]);
    // Keys re-sent before, at the edges of and inside the range, and another node's.
    const keys: KeyCounter[] = [
      { nodeId: 'q-1', ts: Date.UTC(2026, 9, 31, 12), duplicates: 70, corrected: 7 },
      { nodeId: 'q-1', ts: from - MIN, duplicates: 40, corrected: 4 },
      { nodeId: 'q-1', ts: at(35), duplicates: 3, corrected: 1 },
      { nodeId: 'q-1', ts: at(80), duplicates: 2, corrected: 0 },
      { nodeId: 'q-1', ts: to, duplicates: 1, corrected: 1 },
      { nodeId: 'q-1', ts: Date.UTC(2026, 10, 3, 12), duplicates: 100, corrected: 9 },
      { nodeId: 'q-other', ts: at(35), duplicates: 50, corrected: 5 },
    ];
    await insertKeys(t, keys);

    const r = await quality('q-1', `from=${new Date(from).toISOString()}&to=${to}`);
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as Report;
    const want = reference({ rows, allRows: [...rows, ...outside], from, to, now: Date.now(), intervalSeconds: 60, keys, nodeId: 'q-1' });
    assert.deepEqual(pick(body), want);
    // The reference itself, spelled out by hand.
    assert.deepEqual(body.gaps.map((g) => g.missing), [5, 1, 30, 10]);
    assert.equal(body.expected, 120);
    assert.equal(body.received, rows.length);
    assert.equal(body.outOfRange, 4);
    assert.equal(body.late, 5);
    assert.equal(body.duplicates, 5);
    assert.equal(body.corrected, 1);
    assert.equal(body.lastReadingAt, new Date(to + 3 * DAY).toISOString());
    assert.equal(body.stale, true);
    assert.equal(body.intervalSeconds, 60);
    assert.equal(body.gaps[0].start, new Date(from).toISOString());
    assert.equal(body.gaps[3].end, new Date(to).toISOString());

    // A sub-range counts the keys inside it only (the counters are kept per reading key).
    const r2 = await quality('q-1', `from=${from + 30 * MIN}&to=${from + 45 * MIN}`);
    const want2 = reference({ rows, allRows: [...rows, ...outside], from: from + 30 * MIN, to: from + 45 * MIN, now: Date.now(), intervalSeconds: 60, keys, nodeId: 'q-1' });
    assert.deepEqual(pick(r2.json() as Report), want2);
    assert.equal((r2.json() as Report).duplicates, 3);
    assert.deepEqual((r2.json() as Report).gaps, []);
    const r3 = await quality('q-1', `from=${at(36)}&to=${at(79)}`);
    assert.deepEqual([(r3.json() as Report).duplicates, (r3.json() as Report).corrected], [0, 0]);
  });

  test('no readings in range: one gap over the whole range, completeness 0, score 0', async () => {
    await addNode(t, 'q-empty', 300);
    const from = Date.UTC(2026, 10, 5, 0, 2); // not aligned: slots are the multiples of 5 min
    const to = Date.UTC(2026, 10, 5, 6, 0);
    const r = await quality('q-empty', `from=${from}&to=${to}`);
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as Report;
    assert.deepEqual(pick(body), reference({ rows: [], from, to, now: Date.now(), intervalSeconds: 300, keys: [], nodeId: 'q-empty' }));
    assert.equal(body.expected, 71);
    assert.equal(body.completenessPct, 0);
    assert.equal(body.score, 0);
    assert.equal(body.lastReadingAt, null);
    assert.equal(body.stale, true);
    assert.deepEqual(body.gaps, [{ start: new Date(from).toISOString(), end: new Date(to).toISOString(), missing: 71 }]);
  });

  test('readings faster than the interval: completeness is capped at 100', async () => {
    await addNode(t, 'q-fast', 60);
    const from = Date.UTC(2026, 10, 6);
    const rows = Array.from({ length: 120 }, (_, i) => ({ ts: from + i * 30_000 }));
    await insertRows(t, 'q-fast', rows);
    const body = (await quality('q-fast', `from=${from}&to=${from + HOUR}`)).json() as Report;
    assert.deepEqual(pick(body), reference({ rows, from, to: from + HOUR, now: Date.now(), intervalSeconds: 60, keys: [], nodeId: 'q-fast' }));
    assert.equal(body.received, 120);
    assert.equal(body.expected, 60);
    assert.equal(body.completenessPct, 100);
    assert.equal(body.score, 100);
  });

  test('a range reaching into the future: slots after now are not expected; a fresh node is not stale', async () => {
    await addNode(t, 'q-live', 60);
    const now = Date.now();
    const from = now - 30 * MIN;
    // One reading a minute, the newest 20 s ago.
    const rows = Array.from({ length: 30 }, (_, i) => ({ ts: now - 20_000 - i * MIN }));
    await insertRows(t, 'q-live', rows);
    const before = Date.now();
    const r = await quality('q-live', `from=${from}&to=${now + HOUR}`);
    const afterMs = Date.now();
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as Report;
    const candidates = [before, afterMs].map((n) => reference({ rows, from, to: now + HOUR, now: n, intervalSeconds: 60, keys: [], nodeId: 'q-live' }));
    assert.ok(candidates.some((c) => JSON.stringify(c) === JSON.stringify(pick(body))), `${JSON.stringify(pick(body))} vs ${JSON.stringify(candidates)}`);
    assert.equal(body.stale, false);
    assert.ok(body.expected === 30 || body.expected === 31);
    assert.deepEqual(body.gaps, []);
  });

  test('a reading stamped ahead of the clock: the silence before it counts as missing only the slots before now', async () => {
    await addNode(t, 'q-ahead', 60);
    const now = Date.now();
    const rows = [...Array.from({ length: 9 }, (_, i) => ({ ts: now - 10 * MIN + i * MIN })), { ts: now + 4 * MIN }];
    await insertRows(t, 'q-ahead', rows);
    const before = Date.now();
    const r = await quality('q-ahead', `from=${now - 10 * MIN}&to=${now + HOUR}`);
    const afterMs = Date.now();
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as Report;
    const candidates = [before, afterMs].map((n) => reference({ rows, from: now - 10 * MIN, to: now + HOUR, now: n, intervalSeconds: 60, keys: [], nodeId: 'q-ahead' }));
    assert.ok(candidates.some((c) => JSON.stringify(c) === JSON.stringify(pick(body))), `${JSON.stringify(pick(body))} vs ${JSON.stringify(candidates)}`);
    // The silence runs from now − 2 min to now + 4 min; of its 5 slots only those before now (1 or 2) are missing.
    assert.equal(body.gaps.length, 1);
    assert.ok(body.gaps[0].missing <= 2, JSON.stringify(body.gaps));
  });

  test('more than 1000 gaps: the first 1000 are listed, gapCount has them all', async () => {
    await addNode(t, 'q-sparse', 1);
    const from = Date.UTC(2026, 10, 7);
    const to = from + HOUR;
    const rows = Array.from({ length: 1200 }, (_, i) => ({ ts: from + i * 3000 }));
    await insertRows(t, 'q-sparse', rows);
    const body = (await quality('q-sparse', `from=${from}&to=${to}`)).json() as Report;
    const want = reference({ rows, from, to, now: Date.now(), intervalSeconds: 1, keys: [], nodeId: 'q-sparse' });
    assert.equal(want.gapCount, 1200); // 1199 between readings + the trailing 3 s
    assert.equal(body.gapCount, want.gapCount);
    assert.equal(body.gaps.length, 1000);
    assert.deepEqual(body.gaps, want.gaps.slice(0, 1000));
    assert.deepEqual({ ...pick(body), gaps: [] }, { ...want, gaps: [] });
  });

  test('real data: January 2021 of NESO national demand with outages cut out', async () => {
    const text = await readFile('/work/shared/data/neso-historic-demand-2021/demanddata_2021.csv', 'utf8');
    const all: Row[] = [];
    for (const line of text.trim().split('\n').slice(1)) {
      const c = line.split(',');
      const [d, mon, y] = c[0].split('-');
      if (mon !== 'JAN') continue;
      all.push({ ts: Date.UTC(Number(y), 0, Number(d)) + (Number(c[1]) - 1) * 1_800_000 });
    }
    assert.equal(all.length, 1488);
    // A 26-hour outage, a few single missing periods, and two adjacent ones.
    const cut = (r: Row) => {
      const i = (r.ts - Date.UTC(2021, 0, 1)) / 1_800_000;
      return (i >= 400 && i < 452) || [7, 100, 101, 900, 1487].includes(i);
    };
    const rows = all.filter((r) => !cut(r)).map((r, i) => ({ ts: r.ts, flags: i % 97 === 0 ? 1 : i % 89 === 0 ? 2 : 0 }));
    await addNode(t, 'neso-gb', 1800, 60_000_000);
    await insertRows(t, 'neso-gb', rows);
    const keys: KeyCounter[] = [{ nodeId: 'neso-gb', ts: Date.UTC(2021, 0, 15, 12), duplicates: 12, corrected: 3 }];
    await insertKeys(t, keys);
    const from = Date.UTC(2021, 0, 1);
    const to = Date.UTC(2021, 1, 1);
    const body = (await quality('neso-gb', `from=2021-01-01T00:00:00Z&to=2021-02-01T00:00:00Z`)).json() as Report;
    const want = reference({ rows, from, to, now: Date.now(), intervalSeconds: 1800, keys, nodeId: 'neso-gb' });
    assert.deepEqual(pick(body), want);
    assert.equal(body.expected, 1488);
    assert.equal(body.received, 1488 - 57);
    assert.deepEqual(body.gaps.map((g) => g.missing), [1, 2, 52, 1, 1]);
  });

  describe('bad input', () => {
    const from = Date.UTC(2026, 10, 1);
    const cases: [string, string, string, number, string][] = [
      ['from after to', 'q-1', `from=${from + 1000}&to=${from}`, 400, 'INVALID_RANGE'],
      ['from equal to', 'q-1', `from=${from}&to=${from}`, 400, 'INVALID_RANGE'],
      ['a range over 366 days', 'q-1', `from=${from - 367 * DAY}&to=${from}`, 400, 'RANGE_TOO_LARGE'],
      ['a malformed time', 'q-1', `from=last-week&to=${from}`, 400, 'INVALID_TIME'],
      ['a time without offset', 'q-1', `from=2026-11-01T00:00:00&to=${from}`, 400, 'INVALID_TIME'],
      ['an overlong time', 'q-1', `from=${'1'.repeat(65)}&to=${from}`, 400, 'VALIDATION_ERROR'],
      ['a malformed node id', 'bad%20id!', `from=${from - DAY}&to=${from}`, 400, 'VALIDATION_ERROR'],
      ['an unknown node', 'ghost-node', `from=${from - DAY}&to=${from}`, 404, 'NODE_NOT_FOUND'],
    ];
    for (const [name, nodeId, qs, status, code] of cases) {
      test(name, async () => {
        await t.container.db.pool.query(`INSERT INTO nodes (node_id, type, status, capacity_kw, doc) VALUES ('q-1', 'solar', 'active', 1, '{}') ON CONFLICT DO NOTHING`);
        const r = await quality(nodeId, qs);
        assert.equal(r.statusCode, status, r.body);
        const body = r.json() as { error: { code: string; message: string; details: unknown[] } };
        assert.equal(body.error.code, code);
        assert.equal(typeof body.error.message, 'string');
        assert.ok(Array.isArray(body.error.details));
      });
    }
    test('exactly 366 days is allowed; no from/to means the last 24 hours', async () => {
      await addNode(t, 'q-range', 3600);
      const ok = await quality('q-range', `from=${from - 366 * DAY}&to=${from}`);
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal((ok.json() as Report).expected, 366 * 24);
      const t0 = Date.now();
      const d = await quality('q-range', '');
      assert.equal(d.statusCode, 200, d.body);
      const body = d.json() as Report;
      assert.ok(Math.abs(Date.parse(body.to) - t0) < 10_000);
      assert.equal(Date.parse(body.to) - Date.parse(body.from), DAY);
      assert.ok(body.expected === 24 || body.expected === 25);
    });
    test('no key → 401, a key without read → 403', async () => {
      assert.equal((await quality('q-1', '', null)).statusCode, 401);
      assert.equal((await quality('q-1', '', KEYS.telemetry)).statusCode, 403);
    });
  });
});

describe('data quality end to end through ingestion', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());

  test('duplicates, corrections, out-of-range and late readings sent over HTTP are counted', async () => {
    await addNode(t, 'q-e2e', 60, 100);
    const now = Date.now();
    const from = Math.floor(now / MIN) * MIN - 30 * MIN;
    // Readings each minute in [from, from + 30 min), except minutes 12–17; all older than 3 × 60 s
    // are late on arrival, the last two are not.
    const sent: { nodeId: string; timestamp: string; powerKw: number }[] = [];
    const flagsOf = new Map<number, number>();
    for (let m = 0; m < 30; m++) {
      if (m >= 12 && m <= 17) continue;
      const ts = from + m * MIN;
      if (ts > now - 5000) continue;
      const powerKw = m === 3 || m === 20 ? 150 : 42.5; // > 1.1 × 100 kW: out of range
      sent.push({ nodeId: 'q-e2e', timestamp: new Date(ts).toISOString(), powerKw });
      flagsOf.set(ts, (powerKw > 110 ? 1 : 0) | (now - ts > 180_000 ? 2 : 0));
    }
    const post = (readings: unknown[]) => t.request({ method: 'POST', url: '/api/telemetry/batch', key: KEYS.writer, payload: { readings } });
    const first = await post(sent);
    assert.equal(first.statusCode, 200, first.body);
    assert.equal(first.json().stored, sent.length);
    // Four identical re-sends (duplicates) and two with changed values (corrections).
    const again = await post([...sent.slice(0, 4), { ...sent[5], powerKw: 43 }, { ...sent[6], powerKw: 44 }]);
    assert.equal(again.statusCode, 200, again.body);
    assert.equal(again.json().duplicates, 4);

    const r = await t.request({ method: 'GET', url: `/api/data-quality/q-e2e?from=${from}&to=${from + 30 * MIN}`, key: KEYS.read });
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as Report;
    const rows = [...flagsOf].map(([ts, flags]) => ({ ts, flags }));
    // Ingestion counts per key: the re-sent readings' own timestamps.
    const keys: KeyCounter[] = [[0, 'd'], [1, 'd'], [2, 'd'], [3, 'd'], [5, 'c'], [6, 'c']].map(([i, kind]) => ({
      nodeId: 'q-e2e',
      ts: Date.parse(sent[i as number].timestamp),
      duplicates: kind === 'd' ? 1 : 0,
      corrected: kind === 'c' ? 1 : 0,
    }));
    const now2 = Date.now();
    const want = reference({ rows, from, to: from + 30 * MIN, now: now2, intervalSeconds: 60, keys, nodeId: 'q-e2e' });
    // A sub-range holding only two of the re-sent keys counts those two.
    const part = await t.request({ method: 'GET', url: `/api/data-quality/q-e2e?from=${keys[2].ts}&to=${keys[3].ts + 1}`, key: KEYS.read });
    assert.equal(part.json().duplicates, 2);
    assert.deepEqual(pick(body), want);
    assert.equal(body.duplicates, 4);
    assert.equal(body.corrected, 2);
    assert.equal(body.outOfRange, 2);
    assert.ok(body.late >= sent.length - 3);
    assert.ok(body.gaps.some((g) => g.missing === 6));
  });
});
