import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { backends, createTestApp, redisSkip, KEYS, type TestApp } from './support/app.js';
import { applyMergePatch } from '../src/metadata/merge-patch.js';
import { parseIfMatch } from '../src/metadata/service.js';

const JSON_HEADERS = { 'content-type': 'application/json' };
const MERGE_HEADERS = { 'content-type': 'application/merge-patch+json' };

function fullNode(nodeId: string): Record<string, unknown> {
  return {
    nodeId,
    name: 'Frankfurt DC 1',
    type: 'data_center',
    status: 'active',
    capacityKw: 2500,
    storageCapacityKwh: 4000,
    location: { lat: 50.11, lon: 8.68, country: 'DE', region: 'DE-HE', address: 'Hanauer Landstr. 1' },
    timezone: 'Europe/Berlin',
    telemetryIntervalSeconds: 30,
    tariff: { currency: 'EUR', importPricePerKwh: 0.21, exportPricePerKwh: 0.08, demandChargePerKw: 9.5 },
    grid: { connectionPointId: 'DE0001234567890', voltageLevelKv: 20, maxImportKw: 3000, maxExportKw: 2500, operator: 'Syna' },
    technical: { ups: { chemistry: 'LFP', modules: 12 }, pue: 1.35 },
    tags: ['fcr', 'afrr'],
  };
}

function assertEnvelope(r: { statusCode: number; json(): unknown; body: string }, status: number, code?: string): { code: string; message: string; details: { path: string; message: string }[] } {
  assert.equal(r.statusCode, status, r.body);
  const body = r.json() as { error: { code: string; message: string; details: { path: string; message: string }[] } };
  assert.equal(typeof body.error.code, 'string');
  assert.equal(typeof body.error.message, 'string');
  assert.ok(Array.isArray(body.error.details));
  if (code) assert.equal(body.error.code, code, r.body);
  return body.error;
}

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('merge patch and If-Match helpers', () => {
  test('RFC 7396 appendix A examples', () => {
    const cases: [unknown, unknown, unknown][] = [
      [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
      [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
      [{ a: 'b' }, { a: null }, {}],
      [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
      [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
      [{ a: 'c' }, { a: ['b'] }, { a: ['b'] }],
      [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
      [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
      [['a', 'b'], ['c', 'd'], ['c', 'd']],
      [{ a: 'b' }, ['c'], ['c']],
      [{ a: 'foo' }, null, null],
      [{ a: 'foo' }, 'bar', 'bar'],
      [{ e: null }, { a: 1 }, { e: null, a: 1 }],
      [[1, 2], { a: 'b', c: null }, { a: 'b' }],
      [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
    ];
    for (const [target, patch, expected] of cases) {
      const before = JSON.stringify(target);
      assert.deepEqual(applyMergePatch(target, patch), expected, `${before} + ${JSON.stringify(patch)}`);
      assert.equal(JSON.stringify(target), before, 'target is not modified');
    }
  });

  test('If-Match forms', () => {
    assert.equal(parseIfMatch(undefined), undefined);
    assert.deepEqual(parseIfMatch('3'), [3]);
    assert.deepEqual(parseIfMatch('"3"'), [3]);
    assert.deepEqual(parseIfMatch('W/"3"'), [3]);
    assert.deepEqual(parseIfMatch(' "2", W/"5" '), [2, 5]);
    assert.equal(parseIfMatch('*'), '*');
    for (const bad of ['', 'abc', '"x"', '3.5', '"3', 'W/3x']) assert.throws(() => parseIfMatch(bad), /If-Match/, bad);
  });
});

for (const backend of backends()) {
  describe(`node metadata (${backend})`, () => {
    let t: TestApp;
    before(async () => {
      t = await createTestApp({ backend });
    });
    after(async () => t?.close());

    const post = (body: unknown, key?: string | null) =>
      t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: typeof body === 'string' ? body : JSON.stringify(body), key });
    const get = (id: string, headers: Record<string, string> = {}) => t.request({ method: 'GET', url: `/api/metadata/${id}`, headers });
    const patch = (id: string, body: unknown, headers: Record<string, string> = JSON_HEADERS) =>
      t.request({ method: 'PATCH', url: `/api/metadata/${id}`, headers, payload: typeof body === 'string' ? body : JSON.stringify(body) });

    test('POST creates a node at version 1 and GET reads it back with its ETag', async () => {
      const body = fullNode('dc-fra-01');
      const before = Date.now();
      const r = await post(body);
      assert.equal(r.statusCode, 201, r.body);
      const created = r.json();
      assert.equal(created.version, 1);
      assert.equal(r.headers.etag, '"1"');
      assert.equal(r.headers.location, '/api/metadata/dc-fra-01');
      const { version, createdAt, updatedAt, ...doc } = created;
      assert.equal(version, 1);
      assert.deepEqual(doc, body);
      assert.match(createdAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      assert.equal(createdAt, updatedAt);
      assert.ok(Math.abs(Date.parse(createdAt) - before) < 60_000);

      const g = await get('dc-fra-01');
      assert.equal(g.statusCode, 200);
      assert.equal(g.headers.etag, '"1"');
      assert.deepEqual(g.json(), created);

      const notModified = await get('dc-fra-01', { 'if-none-match': '"1"' });
      assert.equal(notModified.statusCode, 304);
      assert.equal(notModified.body, '');
      const modified = await get('dc-fra-01', { 'if-none-match': '"7"' });
      assert.equal(modified.statusCode, 200);

      // The query columns agree with the document.
      const c = new pg.Client({ connectionString: t.databaseUrl });
      await c.connect();
      try {
        const { rows } = await c.query('SELECT type, status, capacity_kw, storage_capacity_kwh, lat, lon, timezone, telemetry_interval_seconds FROM nodes WHERE node_id = $1', ['dc-fra-01']);
        assert.deepEqual(rows[0], { type: 'data_center', status: 'active', capacity_kw: 2500, storage_capacity_kwh: 4000, lat: 50.11, lon: 8.68, timezone: 'Europe/Berlin', telemetry_interval_seconds: 30 });
      } finally {
        await c.end();
      }
    });

    test('defaults: timezone UTC and telemetryIntervalSeconds 60; minimal node without optional parts', async () => {
      const r = await post({ nodeId: 'min-01', name: 'Minimal', type: 'solar', status: 'inactive', capacityKw: 0.5 });
      assert.equal(r.statusCode, 201, r.body);
      const n = r.json();
      assert.equal(n.timezone, 'UTC');
      assert.equal(n.telemetryIntervalSeconds, 60);
      assert.equal(n.location, undefined);
      assert.equal(n.tags, undefined);
      const info = t.container.nodes.get('min-01');
      assert.deepEqual(info, { nodeId: 'min-01', type: 'solar', status: 'inactive', capacityKw: 0.5, storageCapacityKwh: null, timezone: 'UTC', telemetryIntervalSeconds: 60 });
    });

    test('range ends are accepted', async () => {
      const r = await post({
        nodeId: 'edge.node:01',
        name: 'Edge',
        type: 'wind',
        status: 'maintenance',
        capacityKw: 1e-9,
        storageCapacityKwh: 0,
        location: { lat: -90, lon: 180 },
        timezone: 'America/Argentina/Buenos_Aires',
        telemetryIntervalSeconds: 86400,
        tags: [],
      });
      assert.equal(r.statusCode, 201, r.body);
      const r2 = await post({ nodeId: 'E', name: 'x', type: 'other', status: 'decommissioned', capacityKw: 1, location: { lat: 90, lon: -180 }, telemetryIntervalSeconds: 1, timezone: 'Etc/UTC' });
      assert.equal(r2.statusCode, 201, r2.body);
    });

    test('POST of an existing nodeId is a 409 and leaves the node unchanged', async () => {
      await post(fullNode('dup-01'));
      const r = await post({ ...fullNode('dup-01'), name: 'other' });
      assertEnvelope(r, 409, 'NODE_EXISTS');
      assert.equal((await get('dup-01')).json().name, 'Frankfurt DC 1');
    });

    test('GET of an unknown node is a 404, a malformed nodeId a 400', async () => {
      assertEnvelope(await get('nope-01'), 404, 'NODE_NOT_FOUND');
      assertEnvelope(await get('-bad'), 400, 'VALIDATION_ERROR');
      assertEnvelope(await get('x'.repeat(65)), 400, 'VALIDATION_ERROR');
    });

    const badBodies: [string, unknown, string][] = [
      ['bad JSON', '{"nodeId": "x",', '/'],
      ['an array', [fullNode('arr-01')], '/'],
      ['unknown top-level field', { ...fullNode('bad-01'), colour: 'red' }, '/colour'],
      ['unknown nested field', { ...fullNode('bad-01'), location: { lat: 1, lon: 2, altitude: 3 } }, '/location/altitude'],
      ['version sent on create', { ...fullNode('bad-01'), version: 3 }, '/version'],
      ['missing name', { ...fullNode('bad-01'), name: undefined }, '/name'],
      ['missing capacityKw', { ...fullNode('bad-01'), capacityKw: undefined }, '/capacityKw'],
      ['capacityKw as string', { ...fullNode('bad-01'), capacityKw: '2500' }, '/capacityKw'],
      ['capacityKw 0', { ...fullNode('bad-01'), capacityKw: 0 }, '/capacityKw'],
      ['capacityKw negative', { ...fullNode('bad-01'), capacityKw: -5 }, '/capacityKw'],
      ['storageCapacityKwh negative', { ...fullNode('bad-01'), storageCapacityKwh: -1 }, '/storageCapacityKwh'],
      ['capacityKw above 1e12', { ...fullNode('bad-01'), capacityKw: 1.0000001e12 }, '/capacityKw'],
      ['capacityKw near float8\'s limit', { ...fullNode('bad-01'), capacityKw: 1.7e308 }, '/capacityKw'],
      ['storageCapacityKwh above 1e12', { ...fullNode('bad-01'), storageCapacityKwh: 2e12 }, '/storageCapacityKwh'],
      ['an export price below -1e12', { ...fullNode('bad-01'), tariff: { currency: 'EUR', exportPricePerKwh: -1e300 } }, '/tariff/exportPricePerKwh'],
      ['maxImportKw above 1e12', { ...fullNode('bad-01'), grid: { maxImportKw: 1e13 } }, '/grid/maxImportKw'],
      ['unknown type', { ...fullNode('bad-01'), type: 'nuclear' }, '/type'],
      ['unknown status', { ...fullNode('bad-01'), status: 'running' }, '/status'],
      ['lat above 90', { ...fullNode('bad-01'), location: { lat: 90.0001, lon: 0 } }, '/location/lat'],
      ['lon below -180', { ...fullNode('bad-01'), location: { lat: 0, lon: -180.5 } }, '/location/lon'],
      ['location without lon', { ...fullNode('bad-01'), location: { lat: 0 } }, '/location/lon'],
      ['lat as string', { ...fullNode('bad-01'), location: { lat: '50', lon: 8 } }, '/location/lat'],
      ['country as number', { ...fullNode('bad-01'), location: { lat: 1, lon: 1, country: 49 } }, '/location/country'],
      ['made-up timezone', { ...fullNode('bad-01'), timezone: 'Mars/Olympus_Mons' }, '/timezone'],
      ['timezone in the wrong case', { ...fullNode('bad-01'), timezone: 'europe/berlin' }, '/timezone'],
      ['PostgreSQL-only zone name', { ...fullNode('bad-01'), timezone: 'posix/Europe/Berlin' }, '/timezone'],
      ['Factory zone', { ...fullNode('bad-01'), timezone: 'Factory' }, '/timezone'],
      ['UTC offset as timezone', { ...fullNode('bad-01'), timezone: '+01:00' }, '/timezone'],
      ['telemetryIntervalSeconds 0', { ...fullNode('bad-01'), telemetryIntervalSeconds: 0 }, '/telemetryIntervalSeconds'],
      ['telemetryIntervalSeconds 86401', { ...fullNode('bad-01'), telemetryIntervalSeconds: 86401 }, '/telemetryIntervalSeconds'],
      ['telemetryIntervalSeconds fractional', { ...fullNode('bad-01'), telemetryIntervalSeconds: 1.5 }, '/telemetryIntervalSeconds'],
      ['tariff currency lower case', { ...fullNode('bad-01'), tariff: { currency: 'eur' } }, '/tariff/currency'],
      ['tariff without currency', { ...fullNode('bad-01'), tariff: { importPricePerKwh: 0.2 } }, '/tariff/currency'],
      ['tariff price as string', { ...fullNode('bad-01'), tariff: { currency: 'EUR', importPricePerKwh: '0.2' } }, '/tariff/importPricePerKwh'],
      ['grid voltage 0', { ...fullNode('bad-01'), grid: { voltageLevelKv: 0 } }, '/grid/voltageLevelKv'],
      ['grid unknown field', { ...fullNode('bad-01'), grid: { ratingKw: 5 } }, '/grid/ratingKw'],
      ['technical not an object', { ...fullNode('bad-01'), technical: 'LFP' }, '/technical'],
      ['technical over 16 KiB', { ...fullNode('bad-01'), technical: { blob: 'x'.repeat(17_000) } }, '/technical'],
      ['tag too long', { ...fullNode('bad-01'), tags: ['x'.repeat(65)] }, '/tags/0'],
      ['duplicate tags', { ...fullNode('bad-01'), tags: ['fcr', 'fcr'] }, '/tags'],
      ['tag not a string', { ...fullNode('bad-01'), tags: [1] }, '/tags/0'],
      ['nodeId with a space', { ...fullNode('bad 01') }, '/nodeId'],
      ['name empty', { ...fullNode('bad-01'), name: '' }, '/name'],
      ['name null', { ...fullNode('bad-01'), name: null }, '/name'],
    ];
    for (const [what, body, path] of badBodies) {
      test(`POST with ${what} is a 400 naming ${path}`, async () => {
        const r = await post(body);
        const err = assertEnvelope(r, 400);
        if (what === 'bad JSON') assert.equal(err.code, 'INVALID_JSON');
        else assert.ok(err.details.some((d) => d.path === path), `${path} in ${JSON.stringify(err.details)}`);
        assertEnvelope(await get('bad-01'), 404);
      });
    }

    test('POST with an empty body or a body over 64 KiB', async () => {
      assertEnvelope(await t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: '' }), 400);
      const huge = { ...fullNode('huge-01'), technical: { blob: 'x'.repeat(70_000) } };
      assertEnvelope(await post(huge), 413, 'PAYLOAD_TOO_LARGE');
    });

    test('PATCH merges (RFC 7396), bumps the version and keeps createdAt', async () => {
      const created = (await post(fullNode('p-01'))).json();
      const p1 = { name: 'Frankfurt DC 1b', location: { lat: 50.2, address: null }, storageCapacityKwh: null, tags: ['fcr'], technical: { pue: 1.3, ups: { modules: 14 } } };
      const r = await patch('p-01', p1, MERGE_HEADERS);
      assert.equal(r.statusCode, 200, r.body);
      const n = r.json();
      assert.equal(n.version, 2);
      assert.equal(r.headers.etag, '"2"');
      assert.equal(n.createdAt, created.createdAt);
      assert.ok(Date.parse(n.updatedAt) >= Date.parse(created.updatedAt));
      const expected = {
        ...fullNode('p-01'),
        name: 'Frankfurt DC 1b',
        location: { lat: 50.2, lon: 8.68, country: 'DE', region: 'DE-HE' },
        tags: ['fcr'],
        technical: { ups: { chemistry: 'LFP', modules: 14 }, pue: 1.3 },
      };
      delete (expected as Record<string, unknown>).storageCapacityKwh;
      const { version: _v, createdAt: _c, updatedAt: _u, ...doc } = n;
      assert.deepEqual(doc, expected);
      assert.deepEqual((await get('p-01')).json(), n);
      assert.equal(t.container.nodes.get('p-01')?.storageCapacityKwh, null, 'registry sees the removal at once');

      // Plain application/json is accepted too.
      const r2 = await patch('p-01', { status: 'maintenance' });
      assert.equal(r2.statusCode, 200, r2.body);
      assert.equal(r2.json().version, 3);
      assert.equal(t.container.nodes.get('p-01')?.status, 'maintenance');
    });

    test('PATCH removing telemetryIntervalSeconds restores the default; same nodeId in the patch is allowed', async () => {
      await post(fullNode('p-02'));
      const r = await patch('p-02', { nodeId: 'p-02', telemetryIntervalSeconds: null, timezone: null });
      assert.equal(r.statusCode, 200, r.body);
      assert.equal(r.json().telemetryIntervalSeconds, 60);
      assert.equal(r.json().timezone, 'UTC');
    });

    test('a PATCH that changes nothing keeps the version and adds no history', async () => {
      await post(fullNode('p-03'));
      const r = await patch('p-03', { name: 'Frankfurt DC 1', location: { lat: 50.11 } });
      assert.equal(r.statusCode, 200);
      assert.equal(r.json().version, 1);
      const empty = await patch('p-03', {});
      assert.equal(empty.json().version, 1);
      const h = await t.request({ method: 'GET', url: '/api/metadata/p-03/history' });
      assert.equal(h.json().items.length, 1);
    });

    const badPatches: [string, unknown, number, string, string][] = [
      ['nodeId change', { nodeId: 'p-other' }, 400, 'VALIDATION_ERROR', '/nodeId'],
      ['nodeId null', { nodeId: null }, 400, 'VALIDATION_ERROR', '/nodeId'],
      ['null on a required field', { name: null }, 400, 'VALIDATION_ERROR', '/name'],
      ['null on capacityKw', { capacityKw: null }, 400, 'VALIDATION_ERROR', '/capacityKw'],
      ['removing lon from the location', { location: { lon: null } }, 400, 'VALIDATION_ERROR', '/location/lon'],
      ['unknown field', { colour: 'red' }, 400, 'VALIDATION_ERROR', '/colour'],
      ['wrong type', { capacityKw: 'big' }, 400, 'VALIDATION_ERROR', '/capacityKw'],
      ['bad enum', { status: 'broken' }, 400, 'VALIDATION_ERROR', '/status'],
      ['bad timezone', { timezone: 'Europe/Atlantis' }, 400, 'VALIDATION_ERROR', '/timezone'],
      ['read-only version', { version: 9 }, 400, 'VALIDATION_ERROR', '/version'],
      ['read-only updatedAt', { updatedAt: '2026-01-01T00:00:00Z' }, 400, 'VALIDATION_ERROR', '/updatedAt'],
      ['an array', [{ name: 'x' }], 400, 'VALIDATION_ERROR', '/'],
      ['a string', '"hello"', 400, 'VALIDATION_ERROR', '/'],
      ['bad JSON', '{"name":', 400, 'INVALID_JSON', ''],
    ];
    for (const [what, body, status, code, path] of badPatches) {
      test(`PATCH with ${what} is a ${status} and changes nothing`, async () => {
        const id = `bp-${what.replace(/[^a-z]/g, '')}`.slice(0, 60);
        await post(fullNode(id));
        const r = await patch(id, body, MERGE_HEADERS);
        const err = assertEnvelope(r, status, code);
        if (path) assert.ok(err.details.some((d) => d.path === path), `${path} in ${JSON.stringify(err.details)}`);
        const now = (await get(id)).json();
        assert.equal(now.version, 1);
        assert.equal(now.name, 'Frankfurt DC 1');
      });
    }

    test('PATCH of an unknown node is a 404; an unsupported media type a 415', async () => {
      assertEnvelope(await patch('ghost-01', { name: 'x' }), 404, 'NODE_NOT_FOUND');
      await post(fullNode('mt-01'));
      assertEnvelope(await patch('mt-01', '<name>x</name>', { 'content-type': 'application/xml' }), 415);
      assertEnvelope(await patch('mt-01', '{"name":"x"}', { 'content-type': 'text/plain' }), 400, 'VALIDATION_ERROR');
      assert.equal((await get('mt-01')).json().version, 1);
    });

    test('If-Match: 3, "3" and W/"3" match; a stale version is a 412; garbage a 400', async () => {
      await post(fullNode('im-01'));
      let r = await patch('im-01', { capacityKw: 2600 }, { ...JSON_HEADERS, 'if-match': '1' });
      assert.equal(r.statusCode, 200, r.body);
      r = await patch('im-01', { capacityKw: 2700 }, { ...JSON_HEADERS, 'if-match': '"2"' });
      assert.equal(r.statusCode, 200, r.body);
      r = await patch('im-01', { capacityKw: 2800 }, { ...JSON_HEADERS, 'if-match': 'W/"3"' });
      assert.equal(r.statusCode, 200, r.body);
      r = await patch('im-01', { capacityKw: 2900 }, { ...JSON_HEADERS, 'if-match': '"1", "4"' });
      assert.equal(r.statusCode, 200, r.body);
      assert.equal(r.json().version, 5);
      const stale = await patch('im-01', { capacityKw: 1 }, { ...JSON_HEADERS, 'if-match': '"4"' });
      assertEnvelope(stale, 412, 'PRECONDITION_FAILED');
      assertEnvelope(await patch('im-01', { capacityKw: 1 }, { ...JSON_HEADERS, 'if-match': 'yesterday' }), 400, 'INVALID_IF_MATCH');
      const any = await patch('im-01', { capacityKw: 3000 }, { ...JSON_HEADERS, 'if-match': '*' });
      assert.equal(any.statusCode, 200);
      const now = (await get('im-01')).json();
      assert.equal(now.version, 6);
      assert.equal(now.capacityKw, 3000);
      assert.equal(t.container.nodes.get('im-01')?.capacityKw, 3000);
    });

    test('concurrent PATCHes with the same If-Match: exactly one wins', async () => {
      await post(fullNode('race-01'));
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => patch('race-01', { name: `writer ${i}` }, { ...JSON_HEADERS, 'if-match': '"1"' })),
      );
      const codes = results.map((r) => r.statusCode).sort();
      assert.deepEqual(codes, [200, 412, 412, 412, 412, 412, 412, 412]);
      const winner = results.find((r) => r.statusCode === 200)!.json();
      const now = (await get('race-01')).json();
      assert.equal(now.version, 2);
      assert.equal(now.name, winner.name);
    });

    test('concurrent PATCHes without If-Match are serialised: every one gets its own version', async () => {
      await post(fullNode('race-02'));
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => patch('race-02', { tags: [`t${i}`] })));
      assert.ok(results.every((r) => r.statusCode === 200));
      assert.deepEqual(results.map((r) => r.json().version).sort(), [2, 3, 4, 5, 6, 7]);
      const h = (await t.request({ method: 'GET', url: '/api/metadata/race-02/history?order=asc' })).json();
      assert.deepEqual(h.items.map((e: { version: number }) => e.version), [1, 2, 3, 4, 5, 6, 7]);
      // Each entry's document is its predecessor with that entry's patch applied.
      for (let i = 1; i < h.items.length; i++) {
        assert.deepEqual(h.items[i].node, applyReference(h.items[i - 1].node, h.items[i].patch));
      }
    });

    test('history keeps every change: newest first by default, oldest first with order=asc, paginated', async () => {
      const body = fullNode('h-01');
      await post(body);
      const patches = [{ name: 'v2' }, { capacityKw: 3000, tags: null }, { location: { lat: 51 } }, { status: 'inactive' }, { grid: null }];
      const docs: Record<string, unknown>[] = [body];
      for (const p of patches) {
        const r = await patch('h-01', p);
        assert.equal(r.statusCode, 200, r.body);
        docs.push(applyReference(docs[docs.length - 1], p));
      }
      const all = await t.request({ method: 'GET', url: '/api/metadata/h-01/history' });
      assert.equal(all.statusCode, 200, all.body);
      const items = all.json().items;
      assert.equal(all.json().nextCursor, null);
      assert.deepEqual(items.map((e: { version: number }) => e.version), [6, 5, 4, 3, 2, 1]);
      for (const e of items) {
        assert.deepEqual(e.node, docs[e.version - 1], `document at version ${e.version}`);
        assert.equal(e.kind, e.version === 1 ? 'create' : 'patch');
        assert.deepEqual(e.patch, e.version === 1 ? null : patches[e.version - 2]);
        assert.equal(e.changedBy, `key:${(await sha256(KEYS.admin)).slice(0, 12)}`);
        assert.match(e.changedAt, /Z$/);
      }

      for (const order of ['asc', 'desc'] as const) {
        const seen: number[] = [];
        let cursor: string | null = null;
        do {
          const url: string = `/api/metadata/h-01/history?order=${order}&limit=4${cursor ? `&cursor=${cursor}` : ''}`;
          const r = await t.request({ method: 'GET', url });
          assert.equal(r.statusCode, 200, r.body);
          assert.ok(r.json().items.length <= 4);
          seen.push(...r.json().items.map((e: { version: number }) => e.version));
          cursor = r.json().nextCursor;
        } while (cursor);
        assert.deepEqual(seen, order === 'asc' ? [1, 2, 3, 4, 5, 6] : [6, 5, 4, 3, 2, 1]);
      }
    });

    test('history bad inputs: unknown node 404, bad cursor, limit, order 400', async () => {
      await post(fullNode('h-02'));
      assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/ghost-02/history' }), 404, 'NODE_NOT_FOUND');
      assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/h-02/history?cursor=not-a-cursor' }), 400, 'INVALID_CURSOR');
      const wrongShape = Buffer.from(JSON.stringify(['h-02'])).toString('base64url');
      assertEnvelope(await t.request({ method: 'GET', url: `/api/metadata/h-02/history?cursor=${wrongShape}` }), 400, 'INVALID_CURSOR');
      assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/h-02/history?limit=1001' }), 400, 'VALIDATION_ERROR');
      assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/h-02/history?limit=0' }), 400, 'VALIDATION_ERROR');
      assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/h-02/history?order=sideways' }), 400, 'VALIDATION_ERROR');
    });
  });
}

describe('metadata changes reach the NodeRegistry of another instance', { skip: redisSkip }, () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    a = await createTestApp({ backend: 'redis' });
    b = await createTestApp({ backend: 'redis', databaseUrl: a.databaseUrl, keyPrefix: a.keyPrefix });
  });
  after(async () => {
    await b?.close();
    await a?.close();
  });

  test('create and patch on A are seen by B without a reload', async () => {
    assert.equal(b.container.nodes.get('reg-01'), undefined);
    const r = await a.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify(fullNode('reg-01')) });
    assert.equal(r.statusCode, 201, r.body);
    // Propagation, not latency, is under test here: allow for a loaded CI machine.
    await waitFor(() => b.container.nodes.get('reg-01')?.capacityKw === 2500, 15_000);
    assert.deepEqual(b.container.nodes.get('reg-01'), {
      nodeId: 'reg-01',
      type: 'data_center',
      status: 'active',
      capacityKw: 2500,
      storageCapacityKwh: 4000,
      timezone: 'Europe/Berlin',
      telemetryIntervalSeconds: 30,
    });
    const p = await a.request({ method: 'PATCH', url: '/api/metadata/reg-01', headers: MERGE_HEADERS, payload: JSON.stringify({ capacityKw: 1234, status: 'maintenance', timezone: 'Asia/Tokyo' }) });
    assert.equal(p.statusCode, 200, p.body);
    await waitFor(() => b.container.nodes.get('reg-01')?.capacityKw === 1234, 15_000);
    assert.equal(b.container.nodes.get('reg-01')?.status, 'maintenance');
    assert.equal(b.container.nodes.get('reg-01')?.timezone, 'Asia/Tokyo');
    // And B serves A's write over HTTP.
    const g = await b.request({ method: 'GET', url: '/api/metadata/reg-01' });
    assert.equal(g.json().version, 2);
  });
});

/** Independent RFC 7396 reference for the tests (written apart from src/metadata/merge-patch.ts). */
function applyReference(target: unknown, patch: unknown): Record<string, unknown> {
  const out = JSON.parse(JSON.stringify(target)) as Record<string, unknown>;
  const walk = (t: Record<string, unknown>, p: Record<string, unknown>) => {
    for (const k of Object.keys(p)) {
      const v = p[k];
      if (v === null) delete t[k];
      else if (typeof v === 'object' && !Array.isArray(v)) {
        if (typeof t[k] !== 'object' || t[k] === null || Array.isArray(t[k])) t[k] = {};
        walk(t[k] as Record<string, unknown>, v as Record<string, unknown>);
      } else t[k] = v;
    }
  };
  walk(out, patch as Record<string, unknown>);
  return out;
}

async function sha256(s: string): Promise<string> {
  const { createHash } = await import('node:crypto');
  return createHash('sha256').update(s).digest('hex');
}
