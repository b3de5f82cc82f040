import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { backends, createTestApp, KEYS, redisSkip, type TestApp } from './support/app.js';
import { insertNodes, minutesAgo } from './support/telemetry-nodes.js';

const iso = (ms: number) => new Date(ms).toISOString();

for (const backend of backends()) {
  describe(`telemetry latest (${backend})`, () => {
    let t: TestApp;
    before(async () => {
      t = await createTestApp({ backend });
      await insertNodes(t, [
        { nodeId: 'lat-1', intervalSeconds: 60 },
        { nodeId: 'lat-2', intervalSeconds: 60 },
        { nodeId: 'lat-3', intervalSeconds: 600 },
        { nodeId: 'lat-empty' },
      ]);
    });
    after(async () => t?.close());

    const write = (readings: unknown[]) => t.request({ method: 'POST', url: '/api/telemetry/batch', payload: { readings }, key: KEYS.telemetry });
    const latest = (nodeId: string, key: string | null = KEYS.read) => t.request({ method: 'GET', url: `/api/telemetry/${nodeId}/latest`, key });

    test('404 without readings and for an unknown node; 400 bad id; auth', async () => {
      for (const id of ['lat-empty', 'nobody']) {
        const r = await latest(id);
        assert.equal(r.statusCode, 404);
        assert.equal(typeof r.json().error.code, 'string');
      }
      assert.equal((await latest('bad%20id')).statusCode, 400);
      assert.equal((await latest('lat-1', null)).statusCode, 401);
      assert.equal((await latest('lat-1', KEYS.telemetry)).statusCode, 403);
    });

    test('newest by measurement time, with receivedAt, ageSeconds and stale', async () => {
      const a = minutesAgo(2);
      const before = Date.now();
      const w = await write([
        { nodeId: 'lat-1', timestamp: iso(a - 60_000), powerKw: 1 },
        { nodeId: 'lat-1', timestamp: iso(a), powerKw: 2, stateOfChargePct: 55.5, extra: { note: 'x' } },
        { nodeId: 'lat-1', timestamp: iso(a - 120_000), powerKw: 3 },
      ]);
      assert.equal(w.json().stored, 3);
      const r = await latest('lat-1');
      assert.equal(r.statusCode, 200);
      const body = r.json();
      assert.equal(body.nodeId, 'lat-1');
      assert.equal(body.timestamp, iso(a));
      assert.equal(body.powerKw, 2);
      assert.equal(body.stateOfChargePct, 55.5);
      assert.deepEqual(body.extra, { note: 'x' });
      const recv = Date.parse(body.receivedAt);
      assert.ok(recv >= before - 5 && recv <= Date.now(), body.receivedAt);
      const expectedAge = (Date.now() - a) / 1000;
      assert.ok(Math.abs(body.ageSeconds - expectedAge) < 2, `${body.ageSeconds} vs ${expectedAge}`);
      // 2–3 minutes old with a 60 s interval: not yet older than 3 × 60 s.
      assert.equal(body.stale, Date.now() - a > 180_000);
    });

    test('stale when older than 3 × telemetryIntervalSeconds', async () => {
      const old = minutesAgo(5);
      await write([{ nodeId: 'lat-2', timestamp: iso(old), powerKw: 1 }, { nodeId: 'lat-3', timestamp: iso(old), powerKw: 1 }]);
      assert.equal((await latest('lat-2')).json().stale, true); // 5 min > 3 min
      assert.equal((await latest('lat-3')).json().stale, false); // 5 min < 30 min
    });

    test('late data never moves latest backwards; a correction of the latest updates it', async () => {
      const a = minutesAgo(1);
      await write([{ nodeId: 'lat-2', timestamp: iso(a), powerKw: 10 }]);
      assert.equal((await latest('lat-2')).json().powerKw, 10);
      // Late reading (older measurement time) arrives after: latest stays.
      await write([{ nodeId: 'lat-2', timestamp: iso(a - 30_000), powerKw: 99 }]);
      let body = (await latest('lat-2')).json();
      assert.equal(body.timestamp, iso(a));
      assert.equal(body.powerKw, 10);
      // Correction of the current latest: replaces it, cache included.
      const c = await t.request({ method: 'POST', url: '/api/telemetry/lat-2', payload: { timestamp: a, powerKw: 11, healthStatus: 'warning' }, key: KEYS.telemetry });
      assert.deepEqual(c.json(), { stored: 1, duplicates: 0 });
      body = (await latest('lat-2')).json();
      assert.equal(body.powerKw, 11);
      assert.equal(body.healthStatus, 'warning');
      // An identical re-send is a no-op and keeps the first receivedAt.
      const recv = body.receivedAt;
      await t.request({ method: 'POST', url: '/api/telemetry/lat-2', payload: { timestamp: a, powerKw: 11, healthStatus: 'warning' }, key: KEYS.telemetry });
      assert.equal((await latest('lat-2')).json().receivedAt, recv);
      const { rows } = await t.container.db.pool.query('SELECT (extract(epoch FROM ts) * 1000)::float8 AS ts, reading FROM telemetry_latest WHERE node_id = $1', ['lat-2']);
      assert.equal(rows[0].ts, a);
      assert.equal(rows[0].reading.powerKw, 11);
    });

    test('latest is served from the database after the cache is emptied', async () => {
      await t.container.cache.delPrefix('telemetry:latest:');
      const r = await latest('lat-2');
      assert.equal(r.statusCode, 200);
      assert.equal(r.json().powerKw, 11);
    });
  });
}

describe('telemetry latest: two instances share the cache (redis)', { skip: redisSkip }, () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    a = await createTestApp({ backend: 'redis' });
    b = await createTestApp({ backend: 'redis', databaseUrl: a.databaseUrl, keyPrefix: a.keyPrefix });
    await insertNodes(a, [{ nodeId: 'shared-1' }]);
    await b.container.nodes.reloadAll();
  });
  after(async () => {
    await b?.close();
    await a?.close();
  });

  test('a write acknowledged by one instance is what the other reads next', async () => {
    const ts = minutesAgo(3);
    for (let i = 0; i < 5; i++) {
      const w = await b.request({ method: 'POST', url: '/api/telemetry/shared-1', payload: { timestamp: ts + i * 1000, powerKw: i }, key: KEYS.telemetry });
      assert.equal(w.statusCode, 201);
      // Instance a has the previous value cached by now; it must see the new one.
      const r = await a.request({ method: 'GET', url: '/api/telemetry/shared-1/latest', key: KEYS.read });
      assert.equal(r.json().powerKw, i);
    }
  });
});
