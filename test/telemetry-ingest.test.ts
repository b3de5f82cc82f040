import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { insertNodes, minutesAgo } from './support/telemetry-nodes.js';
import { GroupCommitWriter, PartitionCache, type WriteResult } from '../src/telemetry/writer.js';
import { FLAG_CORRECTED, type IngestRow } from '../src/telemetry/validate.js';
import { arrivalStamp } from '../src/telemetry/ingest-service.js';
import { expandInvalidationLog } from '../src/telemetry/rollup-store.js';

const iso = (ms: number) => new Date(ms).toISOString();

interface DbRow {
  node_id: string;
  ts: Date;
  power_kw: number;
  flags: number;
  extra: unknown;
}

async function rowsOf(t: TestApp, nodeId: string): Promise<DbRow[]> {
  const { rows } = await t.container.db.pool.query<DbRow>('SELECT node_id, ts, power_kw, flags, extra FROM telemetry WHERE node_id = $1 ORDER BY ts', [nodeId]);
  return rows;
}

/** The node's dirty buckets: its marks once the invalidation log of direct and large writes is expanded into marks. */
async function dirtyOf(t: TestApp, nodeId: string): Promise<number[]> {
  await expandInvalidationLog(t.container.db.pool);
  const { rows } = await t.container.db.pool.query<{ b: Date }>('SELECT bucket_start AS b FROM telemetry_dirty_buckets WHERE node_id = $1 ORDER BY 1', [nodeId]);
  return rows.map((r) => r.b.getTime());
}

/** Reference for the dirty-bucket rule: every 15-min bucket (epoch-aligned) overlapping [ts, ts + 3 × interval). */
function expectedBuckets(tss: number[], intervalS: number): number[] {
  const out = new Set<number>();
  const q = 15 * 60_000;
  for (const ts of tss) {
    const end = ts + 3 * intervalS * 1000;
    for (let b = ts - (((ts % q) + q) % q); b < end; b += q) out.add(b);
  }
  return [...out].sort((a, b) => a - b);
}

describe('telemetry ingestion (sync)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
    await insertNodes(t, [
      { nodeId: 'bat-1', capacityKw: 100, intervalSeconds: 60 },
      { nodeId: 'bat-2', capacityKw: 100, intervalSeconds: 60 },
      { nodeId: 'wind-10m', capacityKw: 5000, intervalSeconds: 600 },
      { nodeId: 'dirty-1', capacityKw: 100, intervalSeconds: 60 },
      { nodeId: 'dirty-2', capacityKw: 100, intervalSeconds: 300 },
      { nodeId: 'conc-1' },
      { nodeId: 'conc-2' },
      { nodeId: 'conc-3' },
      { nodeId: 'flags-1', capacityKw: 100, intervalSeconds: 60 },
      { nodeId: 'pub-1', capacityKw: 100, intervalSeconds: 60 },
      { nodeId: 'big-1', capacityKw: 100, intervalSeconds: 60 },
      { nodeId: 'big-2', capacityKw: 100, intervalSeconds: 300 },
      { nodeId: 'big-3', capacityKw: 100, intervalSeconds: 60 },
    ]);
  });
  after(async () => t?.close());

  const post = (url: string, payload: unknown, key: string | null = KEYS.telemetry) => t.request({ method: 'POST', url, payload: payload as object, key });

  test('single reading: stored, identical re-send is a duplicate, a changed value replaces it', async () => {
    const ts = minutesAgo(10);
    const reading = { timestamp: iso(ts), powerKw: 12.5, voltageV: 400.2, healthStatus: 'ok', quality: 'measured', extra: { alarms: [], phaseL1V: 230.1 } };
    let r = await post('/api/telemetry/bat-1', reading);
    assert.equal(r.statusCode, 201, r.body);
    assert.deepEqual(r.json(), { stored: 1, duplicates: 0 });
    // Same reading with extra keys in another order and epoch-ms timestamp: still the same reading.
    r = await post('/api/telemetry/bat-1', { ...reading, timestamp: ts, extra: { phaseL1V: 230.1, alarms: [] } });
    assert.deepEqual(r.json(), { stored: 0, duplicates: 1 });
    r = await post('/api/telemetry/bat-1', { ...reading, powerKw: 13 });
    assert.deepEqual(r.json(), { stored: 1, duplicates: 0 });
    const rows = await rowsOf(t, 'bat-1');
    assert.equal(rows.length, 1);
    assert.equal(rows[0].power_kw, 13);
    assert.equal(rows[0].flags & 4, 4, 'a replaced reading carries the corrected flag');
    assert.deepEqual(rows[0].extra, { alarms: [], phaseL1V: 230.1 });
    const { rows: q } = await t.container.db.pool.query("SELECT sum(duplicates)::int8 AS duplicates, sum(corrected)::int8 AS corrected FROM telemetry_quality_keys WHERE node_id = $1 GROUP BY (ts AT TIME ZONE 'UTC')::date", ['bat-1']);
    assert.deepEqual(q, [{ duplicates: 1, corrected: 1 }]);
  });

  test('batch: exact stored/duplicates with duplicates and versions inside one batch', async () => {
    const t0 = minutesAgo(30);
    const readings = [
      { nodeId: 'bat-2', timestamp: iso(t0), powerKw: 1 },
      { nodeId: 'bat-2', timestamp: iso(t0), powerKw: 1 }, // duplicate of the first
      { nodeId: 'bat-2', timestamp: iso(t0), powerKw: 2 }, // correction: stored, last wins
      { nodeId: 'bat-2', timestamp: iso(t0), powerKw: 2 }, // duplicate of the correction
      { nodeId: 'bat-2', timestamp: iso(t0 + 60_000), powerKw: 3 },
      { nodeId: 'bat-2', timestamp: iso(t0), powerKw: 1 }, // back to 1: a change again
    ];
    let r = await post('/api/telemetry/batch', { readings });
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(r.json(), { stored: 4, duplicates: 2, rejected: [] });
    const rows = await rowsOf(t, 'bat-2');
    assert.deepEqual(rows.map((x) => [x.ts.getTime(), x.power_kw]), [[t0, 1], [t0 + 60_000, 3]]);
    const { rows: q } = await t.container.db.pool.query("SELECT sum(duplicates)::int8 AS duplicates, sum(corrected)::int8 AS corrected FROM telemetry_quality_keys WHERE node_id = $1 GROUP BY (ts AT TIME ZONE 'UTC')::date", ['bat-2']);
    assert.deepEqual(q, [{ duplicates: 2, corrected: 2 }]);
    // The whole batch again: the final state of each key is what is stored; the rest are changes.
    r = await post('/api/telemetry/batch', { readings: [readings[4], readings[5]] });
    assert.deepEqual(r.json(), { stored: 0, duplicates: 2, rejected: [] });
  });

  test('every hard error is rejected per reading with index and path; the valid ones are stored', async () => {
    const ts = iso(minutesAgo(5));
    const bad: [unknown, string][] = [
      [{ nodeId: 'bat-1', powerKw: 1 }, '/timestamp'],
      [{ nodeId: 'bat-1', timestamp: 'yesterday', powerKw: 1 }, '/timestamp'],
      [{ nodeId: 'bat-1', timestamp: '2026-02-31T00:00:00Z', powerKw: 1 }, '/timestamp'],
      [{ nodeId: 'bat-1', timestamp: '2026-11-27T10:00:00', powerKw: 1 }, '/timestamp'],
      [{ nodeId: 'bat-1', timestamp: iso(Date.now() + 6 * 60_000), powerKw: 1 }, '/timestamp'],
      [{ nodeId: 'bat-1', timestamp: iso(Date.now() - 31 * 86_400_000), powerKw: 1 }, '/timestamp'],
      [{ nodeId: 'bat-1', timestamp: ts }, '/powerKw'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: '5' }, '/powerKw'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, colour: 'red' }, '/colour'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, frequencyHz: 39.9 }, '/frequencyHz'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, frequencyHz: 70.1 }, '/frequencyHz'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, stateOfChargePct: 100.5 }, '/stateOfChargePct'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, stateOfChargePct: -1 }, '/stateOfChargePct'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, voltageV: -0.1 }, '/voltageV'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, healthStatus: 'broken' }, '/healthStatus'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, quality: 'guessed' }, '/quality'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, extra: { blob: 'x'.repeat(4100) } }, '/extra'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, extra: [1, 2] }, '/extra'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, extra: { s: 'a\u0000b' } }, '/extra'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, extra: { s: '\ud800' } }, '/extra'],
      [{ nodeId: 'nobody-here', timestamp: ts, powerKw: 1 }, '/nodeId'],
      [{ nodeId: 'bad id!', timestamp: ts, powerKw: 1 }, '/nodeId'],
      [{ timestamp: ts, powerKw: 1 }, '/nodeId'],
      ['not an object', ''],
      [null, ''],
      // Finite but beyond any measurement: sums and integrals over them would overflow float8.
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1.7976931348623157e308 }, '/powerKw'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, currentA: -2e12 }, '/currentA'],
      // Below absolute zero; a negative speed.
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, temperatureC: -300 }, '/temperatureC'],
      [{ nodeId: 'bat-1', timestamp: ts, powerKw: 1, windSpeedMs: -0.5 }, '/windSpeedMs'],
    ];
    const valid = { nodeId: 'bat-1', timestamp: iso(minutesAgo(3)), powerKw: 7 };
    const r = await post('/api/telemetry/batch', { readings: [valid, ...bad.map(([b]) => b)] });
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json();
    assert.equal(body.stored, 1);
    assert.equal(body.rejected.length, bad.length);
    bad.forEach(([, path], i) => {
      const rej = body.rejected[i];
      assert.equal(rej.index, i + 1);
      assert.ok(rej.errors.length >= 1);
      assert.ok(
        rej.errors.some((e: { path: string }) => e.path === `/readings/${i + 1}${path}`),
        `reading ${i + 1}: expected an error at ${path}, got ${JSON.stringify(rej.errors)}`,
      );
    });
    assert.equal(body.rejected[0].nodeId, 'bat-1');
    assert.equal(body.rejected[21].nodeId, null);
  });

  test('non-finite numbers are rejected (1e999 parses to Infinity)', async () => {
    const ts = iso(minutesAgo(4));
    const raw = `{"readings":[{"nodeId":"bat-1","timestamp":"${ts}","powerKw":1e999},{"nodeId":"bat-1","timestamp":"${ts}","powerKw":1,"temperatureC":-1e999},` +
      `{"nodeId":"bat-1","timestamp":"${ts}","powerKw":1,"extra":{"x":1e999}},{"nodeId":"bat-1","timestamp":"${ts}","powerKw":1,"extra":{"a/b":[1,{"c":-1e999}]}}]}`;
    const r = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: raw, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
    assert.equal(r.statusCode, 400, r.body);
    assert.equal(r.json().error.code, 'NO_VALID_READINGS');
    assert.deepEqual(r.json().error.details.map((d: { path: string }) => d.path), ['/readings/0/powerKw', '/readings/1/temperatureC', '/readings/2/extra/x', '/readings/3/extra/a~1b/1/c']);
    // Inside extra on the single route too (JSON would otherwise store the value as null).
    const one = await t.request({ method: 'POST', url: '/api/telemetry/bat-1', payload: `{"timestamp":"${ts}","powerKw":1,"extra":{"x":1e999}}`, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
    assert.equal(one.statusCode, 400, one.body);
    assert.equal(one.json().error.details[0].path, '/extra/x');
  });

  test('a "__proto__" key is an unknown field of its reading only (inside extra it is data); other readings of the batch are stored', async () => {
    const ts = iso(minutesAgo(6));
    const raw = `{"readings":[{"nodeId":"bat-2","timestamp":"${ts}","powerKw":1,"__proto__":{"x":1}},{"nodeId":"bat-2","timestamp":"${ts}","powerKw":2,"extra":{"__proto__":{"polluted":true}}}]}`;
    const r = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: raw, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
    assert.equal(r.statusCode, 200, r.body);
    assert.equal(r.json().stored, 1);
    assert.deepEqual(r.json().rejected.map((x: { index: number; errors: { path: string }[] }) => [x.index, x.errors[0].path]), [[0, '/readings/0/__proto__']]);
    const { rows } = await t.container.db.pool.query<{ extra: unknown }>('SELECT extra::text AS extra FROM telemetry WHERE node_id = $1 AND ts = $2', ['bat-2', ts]);
    assert.equal(rows[0].extra, '{"__proto__": {"polluted": true}}');
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    // Invalid and empty JSON keep their answers.
    for (const [payload, code] of [['{"readings":[', 'INVALID_JSON'], ['', 'INVALID_JSON']]) {
      const bad = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
      assert.equal(bad.statusCode, 400, bad.body);
      assert.equal(bad.json().error.code, code);
    }
    // Other routes keep Fastify's guard.
    const meta = await t.request({ method: 'POST', url: '/api/metadata', payload: '{"__proto__":{"x":1}}', headers: { 'content-type': 'application/json' }, key: KEYS.admin });
    assert.equal(meta.statusCode, 400, meta.body);
  });

  test('deeply nested JSON: an extra nested past the bound rejects its reading only (the others are stored), other bodies get a 400; never a 500', async () => {
    const ts = iso(minutesAgo(7));
    const deep = (levels: number) => `${'['.repeat(levels)}1${']'.repeat(levels)}`;
    // Thousands of levels overflow recursive code (JSON.stringify); past 64 (extra itself the first) the reading is rejected.
    for (const levels of [64, 5000, 50_000]) {
      const raw = `{"readings":[{"nodeId":"bat-2","timestamp":"${ts}","powerKw":${levels}},{"nodeId":"bat-2","timestamp":"${iso(minutesAgo(8))}","powerKw":1,"extra":{"d":${deep(levels)}}}]}`;
      const r = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: raw, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
      assert.equal(r.statusCode, 200, r.body.slice(0, 300));
      assert.equal(r.json().stored, 1);
      assert.deepEqual(r.json().rejected.map((x: { index: number; errors: { path: string }[] }) => [x.index, x.errors[0].path]), [[1, '/readings/1/extra']]);
      const one = await t.request({ method: 'POST', url: '/api/telemetry/bat-2', payload: `{"timestamp":"${ts}","powerKw":1,"extra":{"d":${deep(levels)}}}`, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
      assert.equal(one.statusCode, 400, one.body.slice(0, 300));
      assert.equal(one.json().error.details[0].path, '/extra');
      const meta = await t.request({ method: 'POST', url: '/api/metadata', payload: `{"nodeId":"deep-1","name":"d","type":"battery","status":"active","capacityKw":1,"technical":{"d":${deep(levels)}}}`, headers: { 'content-type': 'application/json' }, key: KEYS.admin });
      // (The largest is over the metadata routes' body limit: 413.)
      assert.equal(meta.statusCode, levels > 5000 ? 413 : 400, meta.body.slice(0, 300));
      assert.equal(meta.json().error.code, levels > 5000 ? 'PAYLOAD_TOO_LARGE' : 'VALIDATION_ERROR');
    }
    const { rows } = await t.container.db.pool.query<{ p: number }>('SELECT power_kw AS p FROM telemetry WHERE node_id = $1 AND ts = $2', ['bat-2', ts]);
    assert.equal(rows[0].p, 50_000);
    // 64 levels (extra itself the first) are accepted.
    const ok = await t.request({ method: 'POST', url: '/api/telemetry/bat-2', payload: `{"timestamp":"${iso(minutesAgo(9))}","powerKw":1,"extra":{"d":${deep(63)}}}`, headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
    assert.equal(ok.statusCode, 201, ok.body);
  });

  test('a batch with no valid reading is a 400 with the envelope', async () => {
    const r = await post('/api/telemetry/batch', { readings: [{ nodeId: 'bat-1', powerKw: 1 }, { nodeId: 'ghost', timestamp: iso(minutesAgo(1)), powerKw: 1 }] });
    assert.equal(r.statusCode, 400);
    const e = r.json().error;
    assert.equal(e.code, 'NO_VALID_READINGS');
    assert.deepEqual(e.details.map((d: { path: string }) => d.path), ['/readings/0/timestamp', '/readings/1/nodeId']);
    assert.equal(e.message, 'none of the 2 readings is valid');
    // More problems than are listed: the message says so.
    const many = await post('/api/telemetry/batch', { readings: Array.from({ length: 1200 }, () => ({ nodeId: 'bat-1', powerKw: 1 })) });
    assert.equal(many.statusCode, 400);
    assert.equal(many.json().error.details.length, 1000);
    assert.equal(many.json().error.message, 'none of the 1200 readings is valid (the first 1000 of 1200 problems are listed)');
  });

  test('bad batch envelopes: 400, and 413 above the body limit', async () => {
    for (const payload of [{}, { readings: [] }, { readings: 'x' }, { readings: [], more: 1 }]) {
      const r = await post('/api/telemetry/batch', payload);
      assert.equal(r.statusCode, 400, JSON.stringify(payload));
      assert.equal(typeof r.json().error.code, 'string');
    }
    const tooMany = { readings: Array.from({ length: 10_001 }, (_, i) => ({ nodeId: 'bat-1', timestamp: minutesAgo(0) - i * 1000, powerKw: 1 })) };
    let r = await post('/api/telemetry/batch', tooMany);
    assert.equal(r.statusCode, 400);
    r = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: '{"readings": [', headers: { 'content-type': 'application/json' }, key: KEYS.telemetry });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json().error.code, 'INVALID_JSON');
    r = await post('/api/telemetry/batch?mode=later', { readings: [{ nodeId: 'bat-1', timestamp: iso(minutesAgo(1)), powerKw: 1 }] });
    assert.equal(r.statusCode, 400);
    // The single-reading route keeps the default 1 MiB limit.
    r = await post('/api/telemetry/bat-1', { timestamp: iso(minutesAgo(1)), powerKw: 1, extra: { blob: 'x'.repeat(1_100_000) } });
    assert.equal(r.statusCode, 413);
    assert.equal(r.json().error.code, 'PAYLOAD_TOO_LARGE');
  });

  test('single-reading errors: 400 with details; unknown node; node mismatch; bad node id', async () => {
    let r = await post('/api/telemetry/bat-1', { timestamp: iso(minutesAgo(1)), powerKw: 1, frequencyHz: 80 });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json().error.details[0].path, '/frequencyHz');
    r = await post('/api/telemetry/ghost-node', { timestamp: iso(minutesAgo(1)), powerKw: 1 });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json().error.code, 'UNKNOWN_NODE');
    r = await post('/api/telemetry/bat-1', { nodeId: 'bat-2', timestamp: iso(minutesAgo(1)), powerKw: 1 });
    assert.equal(r.statusCode, 400);
    r = await post('/api/telemetry/bad%20id', { timestamp: iso(minutesAgo(1)), powerKw: 1 });
    assert.equal(r.statusCode, 400);
    r = await post('/api/telemetry/bat-1', [1, 2]);
    assert.equal(r.statusCode, 400);
  });

  test('auth: no key 401, read-only key 403', async () => {
    const body = { timestamp: iso(minutesAgo(1)), powerKw: 1 };
    assert.equal((await post('/api/telemetry/bat-1', body, null)).statusCode, 401);
    assert.equal((await post('/api/telemetry/bat-1', body, KEYS.read)).statusCode, 403);
    assert.equal((await post('/api/telemetry/batch', { readings: [{ nodeId: 'bat-1', ...body }] }, KEYS.read)).statusCode, 403);
  });

  test('soft anomalies are stored and flagged: out of range (bit 1) and late (bit 2)', async () => {
    const now = Date.now();
    const readings = [
      { nodeId: 'flags-1', timestamp: iso(minutesAgo(1)), powerKw: 110 }, // exactly 1.1 x: not flagged
      { nodeId: 'flags-1', timestamp: iso(minutesAgo(2)), powerKw: -110.5 }, // out of range
      { nodeId: 'flags-1', timestamp: iso(now - 200_000), powerKw: 5 }, // 200 s > 3 x 60 s: late
      { nodeId: 'flags-1', timestamp: iso(now - 400_000), powerKw: 500 }, // both
    ];
    const r = await post('/api/telemetry/batch', { readings });
    assert.deepEqual(r.json(), { stored: 4, duplicates: 0, rejected: [] });
    const rows = await rowsOf(t, 'flags-1');
    const byTs = new Map(rows.map((x) => [x.ts.getTime(), x.flags]));
    const expected = (ts: number, power: number) => (Math.abs(power) > 110 ? 1 : 0) | (now - ts > 180_000 ? 2 : 0);
    for (const rd of readings) {
      const ts = Date.parse(rd.timestamp);
      assert.equal(byTs.get(ts), expected(ts, rd.powerKw), rd.timestamp);
    }
  });

  test('dirty buckets: every 15-min bucket overlapping [ts, ts + 3 x interval) of written readings, not duplicates', async () => {
    const q = 15 * 60_000;
    const base = Math.floor(minutesAgo(120) / q) * q; // a bucket start
    const tss1 = [base + 5 * 60_000, base + 14 * 60_000 + 30_000, base + 30 * 60_000];
    const tss2 = [base + 20 * 60_000, base + 44 * 60_000];
    let r = await post('/api/telemetry/batch', {
      readings: [...tss1.map((ts) => ({ nodeId: 'dirty-1', timestamp: ts, powerKw: 1 })), ...tss2.map((ts) => ({ nodeId: 'dirty-2', timestamp: ts, powerKw: 1 }))],
    });
    assert.equal(r.json().stored, 5);
    assert.deepEqual(await dirtyOf(t, 'dirty-1'), expectedBuckets(tss1, 60));
    assert.deepEqual(await dirtyOf(t, 'dirty-2'), expectedBuckets(tss2, 300));
    // The refresher clears them; an identical re-send marks nothing, a correction marks its buckets again.
    await t.container.db.pool.query('DELETE FROM telemetry_dirty_buckets');
    r = await post('/api/telemetry/batch', { readings: tss1.map((ts) => ({ nodeId: 'dirty-1', timestamp: ts, powerKw: 1 })) });
    assert.deepEqual(r.json(), { stored: 0, duplicates: 3, rejected: [] });
    assert.deepEqual(await dirtyOf(t, 'dirty-1'), []);
    r = await post('/api/telemetry/dirty-1', { timestamp: tss1[1], powerKw: 2 });
    assert.deepEqual(r.json(), { stored: 1, duplicates: 0 });
    assert.deepEqual(await dirtyOf(t, 'dirty-1'), expectedBuckets([tss1[1]], 60));
  });

  test('large writes (binary COPY path): every field round-trips; re-sends, corrections and versions counted exactly; dirty buckets of written rows only', async () => {
    const nodes = ['big-1', 'big-2', 'big-3'];
    const interval: Record<string, number> = { 'big-1': 60, 'big-2': 300, 'big-3': 60 };
    const base = minutesAgo(900);
    const specials = [-0, 1e12, 5e-324, -123.456, 0.1 + 0.2, -1e-7];
    const extras: unknown[] = [{ s: 'ünïcødé ✓ 😀' }, { tab: 'a\tb', nl: 'x\ny', bs: 'c:\\d', q: '"quoted"' }, { nested: { list: [1, 2.5, null, true], empty: {} } }];
    type R = Record<string, unknown> & { nodeId: string; timestamp: string; powerKw: number };
    const readings: R[] = [];
    for (let i = 0; i < 500; i++) {
      for (const nodeId of nodes) {
        const r: R = { nodeId, timestamp: iso(base + i * 60_000), powerKw: i % 50 === 0 ? specials[(i / 50) % specials.length] : Math.round(Math.sin(i) * 10_000) / 100 };
        if (i % 7 === 0) Object.assign(r, { reactivePowerKvar: -i, voltageV: 400 + i / 10, currentA: i / 3, frequencyHz: 50, stateOfChargePct: i % 101, temperatureC: -5.5, irradianceWm2: 0, windSpeedMs: 3.25, gridImportKw: 1, gridExportKw: 2 });
        if (i % 3 === 0) r.healthStatus = 'warning';
        if (i % 4 === 0) r.quality = 'estimated';
        if (i % 11 === 0) r.extra = extras[(i / 11) % extras.length];
        readings.push(r);
      }
    }
    // Reference: apply one by one in arrival order (same key and same values = duplicate).
    const state = new Map<string, string>();
    const canon = (r: R) => JSON.stringify(Object.keys(r).filter((k) => k !== 'nodeId' && k !== 'timestamp').sort().map((k) => [k, r[k] === 0 ? 0 : r[k]]));
    const reference = (rs: R[]) => {
      let stored = 0;
      let duplicates = 0;
      for (const r of rs) {
        const key = `${r.nodeId}|${Date.parse(r.timestamp)}`;
        if (state.get(key) === canon(r)) duplicates++;
        else {
          stored++;
          state.set(key, canon(r));
        }
      }
      return { stored, duplicates, rejected: [] };
    };
    // Versions of one key inside the same write: A=1, A=1, A=2, A=1 (later rounds in the same transaction).
    const k0 = { nodeId: 'big-1', timestamp: iso(base + 10_000) };
    const first = [...readings, { ...k0, powerKw: 1 }, { ...k0, powerKw: 1 }, { ...k0, powerKw: 2 }, { ...k0, powerKw: 1 }];
    let r = await post('/api/telemetry/batch', { readings: first });
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(r.json(), reference(first));

    const { rows: stored } = await t.container.db.pool.query(
      `SELECT node_id, (extract(epoch FROM ts) * 1000)::float8 AS ts, power_kw, reactive_power_kvar, voltage_v, current_a, frequency_hz, state_of_charge_pct,
         temperature_c, irradiance_wm2, wind_speed_ms, grid_import_kw, grid_export_kw, health_status, quality, extra, flags
       FROM telemetry WHERE node_id = ANY($1)`,
      [nodes],
    );
    assert.equal(stored.length, readings.length + 1);
    const byKey = new Map(stored.map((x) => [`${x.node_id}|${x.ts}`, x]));
    const cols: [string, string][] = [['powerKw', 'power_kw'], ['reactivePowerKvar', 'reactive_power_kvar'], ['voltageV', 'voltage_v'], ['currentA', 'current_a'], ['frequencyHz', 'frequency_hz'], ['stateOfChargePct', 'state_of_charge_pct'], ['temperatureC', 'temperature_c'], ['irradianceWm2', 'irradiance_wm2'], ['windSpeedMs', 'wind_speed_ms'], ['gridImportKw', 'grid_import_kw'], ['gridExportKw', 'grid_export_kw']];
    for (const rd of readings) {
      const row = byKey.get(`${rd.nodeId}|${Date.parse(rd.timestamp)}`);
      assert.ok(row, rd.timestamp);
      for (const [api, col] of cols) assert.equal(row[col], rd[api] === undefined ? null : (rd[api] as number) === 0 ? 0 : rd[api], `${rd.nodeId} ${rd.timestamp} ${api}`);
      assert.equal(row.health_status, rd.healthStatus ?? null);
      assert.equal(row.quality, rd.quality ?? null);
      assert.deepEqual(row.extra, rd.extra ?? null);
      // All are late (hours old); 1e12 is also out of range.
      assert.equal(row.flags, (Math.abs(rd.powerKw) > 110 ? 1 : 0) | 2, `${rd.nodeId} ${rd.timestamp} flags`);
    }
    const k0row = byKey.get(`big-1|${base + 10_000}`);
    assert.equal(k0row.power_kw, 1);
    assert.equal(k0row.flags, 4 | 2, 'the key corrected inside the write carries the corrected flag');
    // Latest per node: the newest reading, in API shape.
    for (const nodeId of nodes) {
      const l = await t.request({ method: 'GET', url: `/api/telemetry/${nodeId}/latest`, key: KEYS.read });
      const newest = readings.filter((x) => x.nodeId === nodeId).at(-1) as R;
      const { ageSeconds: _a, stale: _s, receivedAt: _r, ...reading } = l.json();
      assert.deepEqual(reading, newest);
    }

    // The whole write again: all duplicates, counted per node and UTC day; nothing marked dirty.
    await expandInvalidationLog(t.container.db.pool);
    await t.container.db.pool.query('DELETE FROM telemetry_dirty_buckets WHERE node_id = ANY($1)', [nodes]);
    const { rows: q0 } = await t.container.db.pool.query("SELECT node_id, (ts AT TIME ZONE 'UTC')::date::text AS day, sum(duplicates)::int AS duplicates, sum(corrected)::int AS corrected FROM telemetry_quality_keys WHERE node_id = ANY($1) GROUP BY 1, 2", [nodes]);
    r = await post('/api/telemetry/batch', { readings });
    assert.deepEqual(r.json(), { stored: 0, duplicates: readings.length, rejected: [] });
    assert.deepEqual(r.json(), reference(readings));
    for (const nodeId of nodes) assert.deepEqual(await dirtyOf(t, nodeId), [], nodeId);
    const dayOf = (ts: string) => ts.slice(0, 10);
    const expectedQ = new Map(q0.map((x) => [`${x.node_id}|${x.day}`, { duplicates: x.duplicates, corrected: x.corrected }]));
    for (const rd of readings) {
      const k = `${rd.nodeId}|${dayOf(rd.timestamp)}`;
      const e = expectedQ.get(k) ?? { duplicates: 0, corrected: 0 };
      e.duplicates++;
      expectedQ.set(k, e);
    }
    // Then a mixed write: 10 changed readings among identical ones.
    const changed = new Set([3, 50, 51, 400, 777, 1000, 1200, 1300, 1498, 1499]);
    const mixed = readings.map((x, i) => (changed.has(i) ? { ...x, powerKw: x.powerKw + 1000 } : x));
    r = await post('/api/telemetry/batch', { readings: mixed });
    assert.deepEqual(r.json(), reference(mixed));
    for (const [i, rd] of mixed.entries()) {
      const k = `${rd.nodeId}|${dayOf(rd.timestamp)}`;
      const e = expectedQ.get(k) ?? { duplicates: 0, corrected: 0 };
      if (changed.has(i)) e.corrected++;
      else e.duplicates++;
      expectedQ.set(k, e);
    }
    const { rows: q1 } = await t.container.db.pool.query("SELECT node_id, (ts AT TIME ZONE 'UTC')::date::text AS day, sum(duplicates)::int AS duplicates, sum(corrected)::int AS corrected FROM telemetry_quality_keys WHERE node_id = ANY($1) GROUP BY 1, 2", [nodes]);
    assert.deepEqual(new Map(q1.map((x) => [`${x.node_id}|${x.day}`, { duplicates: x.duplicates, corrected: x.corrected }])), expectedQ);
    for (const nodeId of nodes) {
      const tss = mixed.filter((x, i) => changed.has(i) && x.nodeId === nodeId).map((x) => Date.parse(x.timestamp));
      assert.deepEqual(await dirtyOf(t, nodeId), expectedBuckets(tss, interval[nodeId]), nodeId);
    }
  });

  test('direct writes: keys all newer than the node\'s known latest go straight into telemetry; a key written meanwhile elsewhere sends the write down the staged path, counts exact', async () => {
    const nodes = ['dw-1', 'dw-2'];
    const ts0 = Math.floor(minutesAgo(600) / 60_000) * 60_000;
    const results: WriteResult[] = [];
    const writer = new GroupCommitWriter(t.container.db, new PartitionCache(t.container.db), { afterCommit: async () => undefined, published: (r) => results.push(r) }, t.container.logger, { directRows: 3 });
    const row = (nodeId: string, k: number, power: number): IngestRow => ({ nodeId, ts: ts0 + k * 60_000, receivedAt: arrivalStamp(), values: [power, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: null, flags: 0, intervalS: 60 });
    const write = async (rows: IngestRow[]) => {
      const counts = await writer.submit(rows);
      await writer.drain();
      return { counts, direct: results.at(-1)?.direct, conflict: results.at(-1)?.directConflict };
    };
    const power = async () => {
      const { rows } = await t.container.db.pool.query<{ node_id: string; ts: Date; power_kw: number }>('SELECT node_id, ts, power_kw FROM telemetry WHERE node_id = ANY($1)', [nodes]);
      return new Map(rows.map((r) => [`${r.node_id}|${(r.ts.getTime() - ts0) / 60_000}`, r.power_kw]));
    };
    const expected = new Map<string, number>();
    const rowsFor = (ks: number[], p: (id: string, k: number) => number) => nodes.flatMap((id) => ks.map((k) => { expected.set(`${id}|${k}`, p(id, k)); return row(id, k, p(id, k)); }));

    // Nothing known of the nodes yet: the staged path.
    let r = await write(rowsFor([0, 1, 2, 3, 4], (_id, k) => k));
    assert.deepEqual(r, { counts: { stored: 10, duplicates: 0 }, direct: false, conflict: false });
    // Newer keys only (plus an identical copy inside the write): direct.
    const fresh = rowsFor([5, 6, 7, 8, 9], (_id, k) => k);
    r = await write([...fresh, { ...fresh[4], receivedAt: arrivalStamp() }]);
    assert.deepEqual(r, { counts: { stored: 10, duplicates: 1 }, direct: true, conflict: false });
    assert.deepEqual(await power(), expected);
    // Its dirty buckets, latest value and in-write copy are kept as on the staged path.
    assert.deepEqual(await dirtyOf(t, 'dw-2'), expectedBuckets([0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((k) => ts0 + k * 60_000), 60));
    const { rows: lat } = await t.container.db.pool.query<{ node_id: string; ts: Date }>('SELECT node_id, ts FROM telemetry_latest WHERE node_id = ANY($1) ORDER BY 1', [nodes]);
    assert.deepEqual(lat.map((l) => [l.node_id, l.ts.getTime()]), nodes.map((id) => [id, ts0 + 9 * 60_000]));
    const { rows: q } = await t.container.db.pool.query<{ d: number }>('SELECT sum(duplicates)::int AS d FROM telemetry_quality_keys WHERE node_id = $1', ['dw-1']);
    assert.equal(q[0].d, 1);

    // Another writer (another instance) wrote key 10 of both nodes meanwhile: for dw-1 the same
    // values (so ours is a duplicate), for dw-2 others (so ours corrects them).
    await t.container.db.pool.query(
      `INSERT INTO telemetry (node_id, ts, received_at, power_kw, flags) VALUES ('dw-1', $1, now() - interval '1 second', 10, 0), ('dw-2', $1, now() - interval '1 second', -1, 0)`,
      [new Date(ts0 + 10 * 60_000)],
    );
    r = await write(rowsFor([10, 11, 12], (_id, k) => k));
    assert.deepEqual(r, { counts: { stored: 5, duplicates: 1 }, direct: false, conflict: true });
    assert.deepEqual(await power(), expected);
    const { rows: corr } = await t.container.db.pool.query<{ flags: number }>('SELECT flags FROM telemetry WHERE node_id = $1 AND ts = $2', ['dw-2', new Date(ts0 + 10 * 60_000)]);
    assert.equal(corr[0].flags & 4, 4, 'the replaced row is flagged corrected');
    // The next newer write goes direct again; an older (late) key keeps a write on the staged path.
    r = await write(rowsFor([13, 14, 15], (_id, k) => k));
    assert.equal(r.direct, true);
    r = await write([...rowsFor([16, 17], (_id, k) => k), row('dw-1', -1, -1)]);
    expected.set('dw-1|-1', -1);
    assert.deepEqual(r, { counts: { stored: 5, duplicates: 0 }, direct: false, conflict: false });
    assert.deepEqual(await power(), expected);
  });

  test('a direct write is one query carrying its COPY data: one that fails on the last or the first row of a multi-chunk COPY leaves its connection in step and nothing of its rows, and is redone exactly on the staged path', async () => {
    // One connection, so the writer's every attempt and the checks between them share it.
    const pool = new pg.Pool({ connectionString: t.databaseUrl, max: 1 });
    const db = { pool, readPool: pool, close: () => pool.end() };
    const results: WriteResult[] = [];
    const writer = new GroupCommitWriter(db, new PartitionCache(db), { afterCommit: async () => undefined, published: (r) => results.push(r) }, t.container.logger, { directRows: 3, splitRows: 1e9 });
    try {
      const nodes = ['otc-1', 'otc-2', 'otc-3'];
      // 3 × 1,500 readings, 10 s apart: ~600 kB of COPY data, several 256 kB chunks.
      const ts0 = Math.floor(minutesAgo(900) / 60_000) * 60_000;
      const row = (nodeId: string, k: number): IngestRow => ({ nodeId, ts: ts0 + k * 10_000, receivedAt: arrivalStamp(), values: [k, 400 + (k % 7), null, null, null, null, null, null, null, null, null], healthStatus: 'ok', quality: 'measured', extra: null, flags: 0, intervalS: 10 });
      const batch = (from: number, to: number) => nodes.flatMap((id) => Array.from({ length: to - from }, (_, i) => row(id, from + i)));
      const pid = async () => (await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      const stats = async () => (await pool.query<{ n: number; s: number }>('SELECT count(*)::int AS n, coalesce(sum(power_kw), 0)::float8 AS s FROM telemetry WHERE node_id = ANY($1)', [nodes])).rows[0];

      // The writer learns the nodes' newest keys (staged), then a newer batch goes direct.
      assert.deepEqual(await writer.submit(batch(0, 10)), { stored: 30, duplicates: 0 });
      assert.equal(results.at(-1)?.direct, false);
      const backend = await pid();
      assert.deepEqual(await writer.submit(batch(10, 1510)), { stored: 4500, duplicates: 0 });
      assert.equal(results.at(-1)?.direct, true);
      assert.equal(await pid(), backend, 'a direct write keeps its connection');
      assert.deepEqual(await stats(), { n: 4530, s: 3 * ((1509 * 1510) / 2) });

      // Another writer stored the last key of the last node of the next batch, with another value:
      // the direct COPY fails on its very last row, after all of its data was sent.
      await pool.query(`INSERT INTO telemetry (node_id, ts, received_at, power_kw, flags) VALUES ('otc-3', $1, now() - interval '1 second', -5, 0)`, [new Date(ts0 + 3009 * 10_000)]);
      assert.deepEqual(await writer.submit(batch(1510, 3010)), { stored: 4500, duplicates: 0 });
      const r = results.at(-1) as WriteResult;
      assert.deepEqual([r.direct, r.directConflict, r.corrected], [false, true, 1]);
      // The same backend, in step (no COPY data left over, no transaction open), holds every row once.
      assert.equal(await pid(), backend, 'the failed direct write left its connection usable');
      // Inside an open transaction now() would be the transaction's start, not this statement's.
      const { rows: tx } = await pool.query<{ own: boolean }>('SELECT now() = statement_timestamp() AS own');
      assert.equal(tx[0].own, true, 'no transaction left open');
      assert.deepEqual(await stats(), { n: 9030, s: 3 * ((3009 * 3010) / 2) });
      const { rows: lat } = await pool.query<{ node_id: string; ts: Date; p: number }>(`SELECT node_id, ts, (reading->>'powerKw')::float8 AS p FROM telemetry_latest WHERE node_id = ANY($1) ORDER BY 1`, [nodes]);
      assert.deepEqual(lat.map((l) => [l.node_id, l.ts.getTime(), l.p]), nodes.map((id) => [id, ts0 + 3009 * 10_000, 3009]));
      // Now on the COPY's very first row, with ~600 kB of its data still to come (which the server
      // must read past, not take for commands).
      await pool.query(`INSERT INTO telemetry (node_id, ts, received_at, power_kw, flags) VALUES ('otc-1', $1, now() - interval '1 second', -5, 0)`, [new Date(ts0 + 3010 * 10_000)]);
      assert.deepEqual(await writer.submit(batch(3010, 4510)), { stored: 4500, duplicates: 0 });
      const r2 = results.at(-1) as WriteResult;
      assert.deepEqual([r2.direct, r2.directConflict, r2.corrected], [false, true, 1]);
      assert.equal(await pid(), backend);
      assert.equal((await pool.query<{ own: boolean }>('SELECT now() = statement_timestamp() AS own')).rows[0].own, true);
      assert.deepEqual(await stats(), { n: 13530, s: 3 * ((4509 * 4510) / 2) });
      // And the next newer batch goes direct again on the same connection.
      assert.deepEqual(await writer.submit(batch(4510, 4520)), { stored: 30, duplicates: 0 });
      assert.equal(results.at(-1)?.direct, true);
      assert.equal(await pid(), backend);
      assert.deepEqual(await stats(), { n: 13560, s: 3 * ((4519 * 4520) / 2) });
    } finally {
      await writer.drain();
      await pool.end();
    }
  });

  test('identical re-sends in a large staged write count as duplicates whatever their arrival stamp: copies of a request split over two flushes, and the same batch written by two instances with one stamp', async () => {
    const quality = async (nodes: string[]) => (await t.container.db.pool.query<{ d: number }>('SELECT coalesce(sum(duplicates), 0)::int AS d FROM telemetry_quality_keys WHERE node_id = ANY($1)', [nodes])).rows[0].d;
    const count = async (nodes: string[]) => (await t.container.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry WHERE node_id = ANY($1)', [nodes])).rows[0].n;
    const ts0 = Math.floor(minutesAgo(1000) / 60_000) * 60_000;
    const readings = (nodes: string[], per: number, stamp: number): IngestRow[] =>
      nodes.flatMap((nodeId) => Array.from({ length: per }, (_, k) => ({ nodeId, ts: ts0 + k * 60_000, receivedAt: stamp, values: [k + 0.5, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: null, flags: 0, intervalS: 60 })));
    const hooks = { afterCommit: async () => undefined, published: () => undefined };

    // One request: 2,000 new readings, then exact copies (same arrival stamp) of 1,500 of them. A
    // flush takes at most 2,000 rows, so the copies go in a second flush, a large staged write.
    const splitNodes = ['split-1', 'split-2'];
    const originals = readings(splitNodes, 1000, arrivalStamp());
    const copies = originals.filter((_, i) => i % 4 !== 0).map((r) => ({ ...r }));
    const w1 = new GroupCommitWriter(t.container.db, new PartitionCache(t.container.db), hooks, t.container.logger, { maxFlushRows: 2000, directRows: 0 });
    assert.deepEqual(await w1.submit([...originals, ...copies]), { stored: 2000, duplicates: 1500 });
    assert.equal(await count(splitNodes), 2000);
    assert.equal(await quality(splitNodes), 1500);

    // Two instances (two writers) receive the same batch and stamp it alike (arrival stamps are
    // unique only within one process): the second one's rows are duplicates.
    const twinNodes = ['twin-1', 'twin-2'];
    const batch = readings(twinNodes, 800, arrivalStamp());
    const a = new GroupCommitWriter(t.container.db, new PartitionCache(t.container.db), hooks, t.container.logger, { directRows: 0 });
    const b = new GroupCommitWriter(t.container.db, new PartitionCache(t.container.db), hooks, t.container.logger, { directRows: 0 });
    assert.deepEqual(await a.submit(batch), { stored: 1600, duplicates: 0 });
    assert.deepEqual(await b.submit(batch.map((r) => ({ ...r }))), { stored: 0, duplicates: 1600 });
    assert.equal(await count(twinNodes), 1600);
    assert.equal(await quality(twinNodes), 1600);
  });

  test('a large write whose first attempt on a new connection failed (its partition dropped behind the cache) is retried and stored: the staging table outlives the rolled-back attempt', async () => {
    const pool = new pg.Pool({ connectionString: t.databaseUrl, max: 1 });
    const db = { pool, readPool: pool, close: () => pool.end() };
    const partitions = new PartitionCache(db);
    const writer = new GroupCommitWriter(db, partitions, { afterCommit: async () => undefined, published: () => undefined }, t.container.logger, { directRows: 0 });
    try {
      const day = Math.floor(Date.now() / 86_400_000) - 20;
      // The cache knows the day's partition; then it is dropped (as retention would).
      await partitions.ensureDay(day);
      await pool.query(`DROP TABLE telemetry_${new Date(day * 86_400_000).toISOString().slice(0, 10).replaceAll('-', '')}`);
      const rows: IngestRow[] = ['stg-1', 'stg-2'].flatMap((nodeId) => Array.from({ length: 750 }, (_, k) => ({ nodeId, ts: day * 86_400_000 + 3_600_000 + k * 60_000, receivedAt: arrivalStamp(), values: [k, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: null, flags: 0, intervalS: 60 })));
      assert.deepEqual(await writer.submit(rows), { stored: 1500, duplicates: 0 });
      const { rows: n } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM telemetry WHERE node_id IN ('stg-1', 'stg-2')`);
      assert.equal(n[0].n, 1500);
      // And the connection's next large write uses the staging table as it is.
      const later = rows.map((r) => ({ ...r, ts: r.ts + 750 * 60_000, receivedAt: arrivalStamp() }));
      assert.deepEqual(await writer.submit(later), { stored: 1500, duplicates: 0 });
    } finally {
      await writer.drain();
      await pool.end();
    }
  });

  test('a direct write sends its latest readings as SQL literals: quotes, backslashes, dollar signs and non-ASCII text in extra arrive unchanged', async () => {
    const results: WriteResult[] = [];
    const writer = new GroupCommitWriter(t.container.db, new PartitionCache(t.container.db), { afterCommit: async () => undefined, published: (r) => results.push(r) }, t.container.logger, { directRows: 1 });
    const ts0 = Math.floor(minutesAgo(800) / 60_000) * 60_000;
    const extra = { note: `it's a "test" \\ with \\\\ $$ $1 $v$ E'x' \u00e9\u4e2d\ud83d\ude00`, path: 'C:\\temp\\new', list: ["'", '\\', '$'] };
    const row = (k: number, ex: string | null): IngestRow => ({ nodeId: 'lit-1', ts: ts0 + k * 60_000, receivedAt: arrivalStamp(), values: [k, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: ex, flags: 0, intervalS: 60 });
    await writer.submit([row(0, null)]);
    assert.equal(results.at(-1)?.direct, false);
    await writer.submit([row(1, JSON.stringify(extra))]);
    assert.equal(results.at(-1)?.direct, true);
    await writer.drain();
    const { rows } = await t.container.db.pool.query<{ reading: { extra: unknown; powerKw: number } }>(`SELECT reading FROM telemetry_latest WHERE node_id = 'lit-1'`);
    assert.deepEqual(rows[0].reading.extra, extra);
    assert.equal(rows[0].reading.powerKw, 1);
    const stored = await rowsOf(t, 'lit-1');
    assert.deepEqual(stored.map((r) => r.extra), [null, extra]);
  });

  test('last write wins by arrival: a version that arrived earlier but is applied later (an async reading behind a sync write) leaves the newer one, in telemetry and latest', async () => {
    const { writeRows, BEGIN_WRITE } = await import('../src/telemetry/writer.js');
    const ts0 = Math.floor(minutesAgo(500) / 60_000) * 60_000;
    const row = (nodeId: string, k: number, power: number, receivedAt: number): IngestRow => ({ nodeId, ts: ts0 + k * 60_000, receivedAt, values: [power, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: null, flags: 0, intervalS: 60 });
    await new PartitionCache(t.container.db).ensureDay(Math.floor(ts0 / 86_400_000));
    const client = await t.container.db.pool.connect();
    try {
      // smallRows 1000: one statement with rows as JSON; 0: COPY into the staging table and upsert.
      for (const [nodeId, smallRows] of [['lww-small', 1000], ['lww-staged', 0]] as const) {
        const t1 = Date.now();
        const t2 = t1 + 5;
        await client.query(BEGIN_WRITE);
        // The later arrival (t2) is applied first: key 0 = 3 and key 1 = 3 (key 1 is the node's newest).
        let r = await writeRows(client, [row(nodeId, 0, 3, t2), row(nodeId, 1, 3, t2)], smallRows);
        await client.query('COMMIT');
        assert.equal(r.stored, 2);
        // Then the earlier arrival (t1) with other values: it changes no value. In arrival order it was
        // stored first and the later version replaced it: stored, not duplicates; the rows count as corrected.
        await client.query(BEGIN_WRITE);
        r = await writeRows(client, [row(nodeId, 0, 2, t1), row(nodeId, 1, 2, t1)], smallRows);
        await client.query('COMMIT');
        assert.deepEqual({ stored: r.stored, duplicates: r.duplicates, corrected: r.corrected, latest: r.latest.length }, { stored: 2, duplicates: 0, corrected: 2, latest: 0 }, nodeId);
        const { rows } = await t.container.db.pool.query<{ power_kw: number; received_at: Date; flags: number }>('SELECT power_kw, received_at, flags FROM telemetry WHERE node_id = $1 ORDER BY ts', [nodeId]);
        assert.deepEqual(rows.map((x) => x.power_kw), [3, 3], nodeId);
        assert.deepEqual(rows.map((x) => Math.floor(x.received_at.getTime())), [t2, t2], nodeId);
        assert.ok(rows.every((x) => (x.flags & FLAG_CORRECTED) !== 0), nodeId);
        const { rows: q } = await t.container.db.pool.query<{ d: number; c: number }>('SELECT sum(duplicates)::int AS d, sum(corrected)::int AS c FROM telemetry_quality_keys WHERE node_id = $1', [nodeId]);
        assert.deepEqual(q[0], { d: 0, c: 2 }, nodeId);
        // An identical copy that arrived earlier is a duplicate.
        await client.query(BEGIN_WRITE);
        r = await writeRows(client, [row(nodeId, 0, 3, t1)], smallRows);
        await client.query('COMMIT');
        assert.deepEqual({ stored: r.stored, duplicates: r.duplicates }, { stored: 0, duplicates: 1 }, nodeId);
        const { rows: lat } = await t.container.db.pool.query<{ p: number }>("SELECT (reading->>'powerKw')::float8 AS p FROM telemetry_latest WHERE node_id = $1", [nodeId]);
        assert.equal(lat[0].p, 3, nodeId);
        // A version that arrived later still replaces it.
        await client.query(BEGIN_WRITE);
        r = await writeRows(client, [row(nodeId, 1, 4, t2 + 1)], smallRows);
        await client.query('COMMIT');
        assert.deepEqual({ stored: r.stored, latest: r.latest.length }, { stored: 1, latest: 1 });
      }
    } finally {
      client.release();
    }
  });

  test('writer: concurrent flushes never share a node; versions of a key apply in arrival order', async () => {
    const nodes = ['ord-1', 'ord-2', 'ord-3'];
    const ts0 = minutesAgo(700);
    let inFlight = new Set<string>();
    let overlap = 0;
    let flushes = 0;
    const writer = new GroupCommitWriter(
      t.container.db,
      new PartitionCache(t.container.db),
      {
        afterCommit: async () => undefined,
        published: () => undefined,
      },
      t.container.logger,
      // extraFlushRows 1: every buffered reading may start a parallel flush, the most interleaving.
      { concurrency: 4, maxFlushRows: 7, splitRows: 4, extraFlushRows: 1 },
    );
    // Every flush passes through writeWithRetry: record the nodes of the flushes in flight.
    const realWrite = (writer as unknown as { writeWithRetry(rows: IngestRow[]): Promise<WriteResult> }).writeWithRetry.bind(writer);
    (writer as unknown as { writeWithRetry(rows: IngestRow[]): Promise<WriteResult> }).writeWithRetry = async (rows) => {
      flushes++;
      const mine = new Set(rows.map((r) => r.nodeId));
      for (const id of mine) if (inFlight.has(id)) overlap++;
      inFlight = new Set([...inFlight, ...mine]);
      try {
        return await realWrite(rows);
      } finally {
        for (const id of mine) inFlight.delete(id);
      }
    };
    const row = (nodeId: string, k: number, power: number): IngestRow => ({ nodeId, ts: ts0 + k * 1000, receivedAt: arrivalStamp(), values: [power, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: null, flags: 0, intervalS: 60 });
    // 60 submissions in one turn: each key gets 1, 2, 3, 2 (changes) and 2 again (an identical re-send).
    const expected = new Map<string, number>();
    const calls: Promise<{ stored: number; duplicates: number }>[] = [];
    for (const v of [1, 2, 3, 2, 2]) {
      for (let k = 0; k < 4; k++) {
        for (const id of nodes) {
          calls.push(writer.submit([row(id, k, v)]));
          expected.set(`${id}|${ts0 + k * 1000}`, v);
        }
      }
    }
    const results = await Promise.all(calls);
    await writer.drain();
    assert.equal(overlap, 0, 'no node in two concurrent flushes');
    assert.ok(flushes >= 6, `several flushes (${flushes})`);
    // Per key: 1 stored, 2 stored, 3 stored, 2 stored, 2 duplicate → 48 stored, 12 duplicates.
    assert.equal(results.reduce((a, r) => a + r.stored, 0), 48);
    assert.equal(results.reduce((a, r) => a + r.duplicates, 0), 12);
    const { rows } = await t.container.db.pool.query<{ node_id: string; ts: Date; power_kw: number }>('SELECT node_id, ts, power_kw FROM telemetry WHERE node_id = ANY($1) AND ts >= $2 AND ts < $3', [nodes, new Date(ts0), new Date(ts0 + 4000)]);
    assert.deepEqual(new Map(rows.map((r) => [`${r.node_id}|${r.ts.getTime()}`, r.power_kw])), expected);
  });

  test('while a flush runs, a few buffered readings wait for it and go together; enough start a parallel flush', async () => {
    const ts0 = minutesAgo(650);
    const row = (nodeId: string, k: number): IngestRow => ({ nodeId, ts: ts0 + k * 1000, receivedAt: arrivalStamp(), values: [k, null, null, null, null, null, null, null, null, null, null], healthStatus: null, quality: null, extra: null, flags: 0, intervalS: 60 });
    const tick = () => new Promise((r) => setImmediate(r));
    const run = async (extraFlushRows: number, tag: string, later: number) => {
      const sizes: number[] = [];
      const writer = new GroupCommitWriter(t.container.db, new PartitionCache(t.container.db), { afterCommit: async () => undefined, published: (_r, rows) => sizes.push(rows) }, t.container.logger, { concurrency: 4, extraFlushRows });
      // The first flush is held on the row lock of its node's latest value, so it stays running.
      const blocker = await t.container.db.pool.connect();
      await writer.submit([row(`${tag}-0`, 0)]);
      sizes.length = 0;
      await blocker.query('BEGIN');
      await blocker.query('SELECT 1 FROM telemetry_latest WHERE node_id = $1 FOR UPDATE', [`${tag}-0`]);
      const first = writer.submit([row(`${tag}-0`, 1)]);
      for (let i = 0; i < 5 && sizes.length === 0; i++) await tick();
      // Then readings of other nodes arrive one per event-loop turn.
      const rest: Promise<unknown>[] = [];
      for (let i = 1; i <= later; i++) {
        rest.push(writer.submit([row(`${tag}-${i}`, 0)]));
        await tick();
      }
      await new Promise((r) => setTimeout(r, 100));
      const startedWhileHeld = sizes.length;
      await blocker.query('COMMIT');
      blocker.release();
      await Promise.all([first, ...rest]);
      await writer.drain();
      return { sizes, startedWhileHeld };
    };
    // Threshold 64, 10 stragglers: none starts while the first flush is held; they go in one flush after it.
    const few = await run(64, 'xf-a', 10);
    assert.equal(few.startedWhileHeld, 0);
    assert.deepEqual(few.sizes, [1, 10]);
    // Threshold 1: the stragglers start flushes of their own while the first is held.
    const eager = await run(1, 'xf-b', 10);
    assert.ok(eager.startedWhileHeld >= 1, `parallel flushes completed while the first was held (${eager.startedWhileHeld})`);
    assert.equal(eager.sizes.reduce((a, b) => a + b, 0), 11);
  });

  test('8 concurrent clients with overlapping batches: stored equals the distinct keys, no deadlock', async () => {
    const nodes = ['conc-1', 'conc-2', 'conc-3'];
    const t0 = minutesAgo(600);
    const clients = 8;
    const batches: { nodeId: string; timestamp: number; powerKw: number }[][] = [];
    for (let c = 0; c < clients; c++) {
      const readings = [];
      // Each client covers an overlapping window of keys, in its own (shuffled) order.
      for (let i = c * 150; i < c * 150 + 600; i++) {
        for (const nodeId of nodes) readings.push({ nodeId, timestamp: t0 + i * 1000, powerKw: (i % 97) + nodes.indexOf(nodeId) });
      }
      if (c % 2) readings.reverse();
      batches.push(readings);
    }
    const distinct = new Set(batches.flat().map((r) => `${r.nodeId}|${r.timestamp}`));
    const results = await Promise.all(batches.map((readings) => post('/api/telemetry/batch', { readings })));
    let stored = 0;
    let duplicates = 0;
    for (const r of results) {
      assert.equal(r.statusCode, 200, r.body);
      stored += r.json().stored;
      duplicates += r.json().duplicates;
    }
    assert.equal(stored, distinct.size);
    assert.equal(stored + duplicates, batches.flat().length);
    const { rows } = await t.container.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry WHERE node_id = ANY($1)', [nodes]);
    assert.equal(rows[0].n, distinct.size);
  });

  test('after commit: telemetry.latest and telemetry.changed are published', async () => {
    const latest: unknown[] = [];
    const changed: unknown[] = [];
    const un1 = await t.container.pubsub.subscribe('telemetry.latest', (m) => latest.push(JSON.parse(m)));
    const un2 = await t.container.pubsub.subscribe('telemetry.changed', (m) => changed.push(JSON.parse(m)));
    const a = minutesAgo(50);
    const r = await post('/api/telemetry/batch', {
      readings: [
        { nodeId: 'pub-1', timestamp: iso(a), powerKw: 1 },
        { nodeId: 'pub-1', timestamp: iso(a + 120_000), powerKw: 2, healthStatus: 'warning', extra: { k: 1 } },
      ],
    });
    assert.equal(r.json().stored, 2);
    await new Promise((res) => setTimeout(res, 50));
    await un1();
    await un2();
    // One message per channel and write: telemetry.latest one line per node, telemetry.changed an array.
    assert.equal(latest.length, 1);
    const msg = latest[0] as { nodeId: string; timestamp: string; receivedAt: string; reading: Record<string, unknown> };
    assert.equal(msg.nodeId, 'pub-1');
    assert.equal(msg.timestamp, iso(a + 120_000));
    assert.deepEqual(msg.reading, { nodeId: 'pub-1', timestamp: iso(a + 120_000), powerKw: 2, healthStatus: 'warning', extra: { k: 1 } });
    assert.ok(Math.abs(Date.parse(msg.receivedAt) - Date.now()) < 60_000);
    assert.deepEqual(changed, [[{ nodeId: 'pub-1', from: a, to: a + 120_001 }]]);
  });

  test('metrics count ingested readings, rejections by reason and flushes', async () => {
    const r = await t.request({ method: 'GET', url: '/metrics', key: null });
    assert.match(r.body, /telemetry_ingested_readings_total \d+/);
    assert.match(r.body, /telemetry_rejected_readings_total\{reason="unknown_node"\} \d+/);
    assert.match(r.body, /telemetry_flush_readings_count \d+/);
    assert.match(r.body, /telemetry_ingest_queue_depth_readings 0/);
  });

  test('database outage: 503 with Retry-After, fast, never a 500', async () => {
    const name = new URL(t.databaseUrl).pathname.slice(1);
    const serverUrl = new URL(t.databaseUrl);
    serverUrl.pathname = '/postgres';
    const admin = new pg.Client({ connectionString: serverUrl.toString() });
    await admin.connect();
    try {
      await admin.query(`ALTER DATABASE "${name}" WITH ALLOW_CONNECTIONS false`);
      // Drop every pooled connection so the next write must connect.
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
      await new Promise((res) => setTimeout(res, 100));
      const t0 = Date.now();
      const r = await post('/api/telemetry/bat-1', { timestamp: iso(minutesAgo(1)), powerKw: 1 });
      assert.equal(r.statusCode, 503, r.body);
      assert.ok(r.headers['retry-after']);
      assert.equal(r.json().error.code, 'DATABASE_UNAVAILABLE');
      assert.ok(Date.now() - t0 < 5000);
      const b = await post('/api/telemetry/batch', { readings: [{ nodeId: 'bat-1', timestamp: iso(minutesAgo(1)), powerKw: 1 }] });
      assert.equal(b.statusCode, 503, b.body);
    } finally {
      await admin.query(`ALTER DATABASE "${name}" WITH ALLOW_CONNECTIONS true`);
      await admin.end();
    }
    const r = await post('/api/telemetry/bat-1', { timestamp: iso(minutesAgo(1)), powerKw: 1 });
    assert.equal(r.statusCode, 201, r.body);
  });
});

describe('telemetry ingestion: UNKNOWN_NODES=accept', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ env: { UNKNOWN_NODES: 'accept' } });
  });
  after(async () => t?.close());

  test('readings of nodes without metadata are stored (default interval, no capacity check)', async () => {
    const r = await t.request({
      method: 'POST',
      url: '/api/telemetry/batch',
      payload: { readings: [{ nodeId: 'stranger-1', timestamp: iso(minutesAgo(2)), powerKw: 1e6 }] },
      key: KEYS.telemetry,
    });
    assert.deepEqual(r.json(), { stored: 1, duplicates: 0, rejected: [] });
    const s = await t.request({ method: 'POST', url: '/api/telemetry/stranger-2', payload: { timestamp: iso(minutesAgo(2)), powerKw: 3 }, key: KEYS.telemetry });
    assert.equal(s.statusCode, 201);
    const { rows } = await t.container.db.pool.query('SELECT node_id, flags FROM telemetry ORDER BY node_id');
    assert.deepEqual(rows, [{ node_id: 'stranger-1', flags: 0 }, { node_id: 'stranger-2', flags: 0 }]);
  });
});
