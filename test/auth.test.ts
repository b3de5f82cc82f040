import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { backends, createTestApp, redisSkip, KEYS, type TestApp } from './support/app.js';

const JSON_HEADERS = { 'content-type': 'application/json' };
const NODE = { nodeId: 'auth-01', name: 'Auth node', type: 'battery', status: 'active', capacityKw: 100 };

function assertEnvelope(r: { statusCode: number; body: string; json(): unknown }, status: number, code: string): void {
  assert.equal(r.statusCode, status, r.body);
  const e = (r.json() as { error: { code: string; message: string; details: unknown[] } }).error;
  assert.equal(e.code, code);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.ok(Array.isArray(e.details));
}

describe('authentication and scopes on the metadata and node routes', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
    const r = await t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify(NODE) });
    assert.equal(r.statusCode, 201, r.body);
  });
  after(async () => t?.close());

  const reads = ['/api/metadata/auth-01', '/api/metadata/auth-01/history', '/api/nodes/active', '/api/nodes/by-type/battery', '/api/nodes/nearby?lat=0&lon=0&radiusKm=10'];

  test('no key: 401 on every read and write', async () => {
    for (const url of reads) assertEnvelope(await t.request({ method: 'GET', url, key: null }), 401, 'UNAUTHORIZED');
    assertEnvelope(await t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify({ ...NODE, nodeId: 'auth-02' }), key: null }), 401, 'UNAUTHORIZED');
    assertEnvelope(await t.request({ method: 'PATCH', url: '/api/metadata/auth-01', headers: JSON_HEADERS, payload: '{"name":"x"}', key: null }), 401, 'UNAUTHORIZED');
  });

  test('unknown key: 401, as Bearer and as X-API-Key', async () => {
    assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/auth-01', key: 'not-a-real-key-123' }), 401, 'UNAUTHORIZED');
    assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/auth-01', key: null, headers: { 'x-api-key': 'not-a-real-key-123' } }), 401, 'UNAUTHORIZED');
    assertEnvelope(await t.request({ method: 'GET', url: '/api/metadata/auth-01', key: null, headers: { authorization: 'Basic dXNlcjpwdw==' } }), 401, 'UNAUTHORIZED');
  });

  test('a key without the scope: 403 (read key writing, write key reading)', async () => {
    assertEnvelope(await t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify({ ...NODE, nodeId: 'auth-03' }), key: KEYS.read }), 403, 'FORBIDDEN');
    assertEnvelope(await t.request({ method: 'PATCH', url: '/api/metadata/auth-01', headers: JSON_HEADERS, payload: '{"name":"x"}', key: KEYS.read }), 403, 'FORBIDDEN');
    assertEnvelope(await t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify({ ...NODE, nodeId: 'auth-03' }), key: KEYS.telemetry }), 403, 'FORBIDDEN');
    for (const url of reads) assertEnvelope(await t.request({ method: 'GET', url, key: KEYS.metadata }), 403, 'FORBIDDEN');
    // Nothing was written by the refused requests.
    const g = await t.request({ method: 'GET', url: '/api/metadata/auth-01', key: KEYS.read });
    assert.equal(g.json().name, 'Auth node');
    assert.equal(g.json().version, 1);
    assert.equal((await t.request({ method: 'GET', url: '/api/metadata/auth-03' })).statusCode, 404);
  });

  test('the right scope passes: read key reads, metadata key writes, X-API-Key works, admin does everything', async () => {
    for (const url of reads) assert.equal((await t.request({ method: 'GET', url, key: KEYS.read })).statusCode, 200, url);
    const viaHeader = await t.request({ method: 'GET', url: '/api/metadata/auth-01', key: null, headers: { 'x-api-key': KEYS.read } });
    assert.equal(viaHeader.statusCode, 200, viaHeader.body);
    assert.equal(viaHeader.json().nodeId, 'auth-01');
    const created = await t.request({ method: 'POST', url: '/api/metadata', headers: { ...JSON_HEADERS, 'x-api-key': KEYS.metadata }, payload: JSON.stringify({ ...NODE, nodeId: 'auth-04' }), key: null });
    assert.equal(created.statusCode, 201, created.body);
    const patched = await t.request({ method: 'PATCH', url: '/api/metadata/auth-04', headers: JSON_HEADERS, payload: '{"name":"renamed"}', key: KEYS.metadata });
    assert.equal(patched.statusCode, 200, patched.body);
    const combined = await t.request({ method: 'PATCH', url: '/api/metadata/auth-04', headers: JSON_HEADERS, payload: '{"name":"again"}', key: KEYS.writer });
    assert.equal(combined.statusCode, 200, combined.body);
    assert.equal((await t.request({ method: 'GET', url: '/api/metadata/auth-04', key: KEYS.admin })).json().version, 3);
  });

  test('health, metrics and docs need no key', async () => {
    for (const url of ['/health', '/health/live', '/metrics', '/docs/openapi.json']) {
      assert.equal((await t.request({ method: 'GET', url, key: null })).statusCode, 200, url);
    }
  });

  test('the OpenAPI document lists the metadata routes as needing a key', async () => {
    const doc = (await t.request({ method: 'GET', url: '/docs/openapi.json', key: null })).json();
    for (const [path, method] of [['/api/metadata', 'post'], ['/api/metadata/{nodeId}', 'get'], ['/api/metadata/{nodeId}', 'patch'], ['/api/metadata/{nodeId}/history', 'get'], ['/api/nodes/active', 'get'], ['/api/nodes/by-type/{type}', 'get'], ['/api/nodes/nearby', 'get']]) {
      const op = doc.paths[path]?.[method];
      assert.ok(op, `${method} ${path} documented`);
      assert.ok(Array.isArray(op.security) && op.security.length > 0, `${method} ${path} needs a key`);
    }
  });
});

for (const backend of backends()) {
  describe(`rate limit (${backend})`, () => {
    let t: TestApp;
    before(async () => {
      t = await createTestApp({ backend, env: { RATE_LIMIT_PER_MINUTE: '5' } });
    });
    after(async () => t?.close());

    test('the 6th request of a key within a minute is a 429 with Retry-After and the envelope; other keys are unaffected', async () => {
      for (let i = 1; i <= 5; i++) {
        const r = await t.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.read });
        assert.equal(r.statusCode, 404, `request ${i}: ${r.body}`);
        assert.equal(r.headers['x-ratelimit-remaining'], String(5 - i));
      }
      const sixth = await t.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.read });
      assertEnvelope(sixth, 429, 'RATE_LIMITED');
      const retryAfter = Number(sixth.headers['retry-after']);
      assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After ${sixth.headers['retry-after']}`);
      // Another key has its own budget.
      const other = await t.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.admin });
      assert.equal(other.statusCode, 404);
      // Health stays reachable for a limited caller.
      assert.equal((await t.request({ method: 'GET', url: '/health/live', key: KEYS.read })).statusCode, 200);
    });

    test('requests without a valid key are refused (401) and do not use up a key budget', async () => {
      for (let i = 0; i < 8; i++) {
        assertEnvelope(await t.request({ method: 'GET', url: '/api/nodes/active', key: null }), 401, 'UNAUTHORIZED');
        assertEnvelope(await t.request({ method: 'GET', url: '/api/nodes/active', key: 'not-a-real-key-123' }), 401, 'UNAUTHORIZED');
      }
      const r = await t.request({ method: 'GET', url: '/api/nodes/active', key: KEYS.writer });
      assert.equal(r.statusCode, 200, r.body);
      assert.equal(r.headers['x-ratelimit-remaining'], '4');
    });
  });
}

describe('rate limit shared through Redis by two instances', { skip: redisSkip }, () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    a = await createTestApp({ backend: 'redis', env: { RATE_LIMIT_PER_MINUTE: '5' } });
    b = await createTestApp({ backend: 'redis', keyPrefix: a.keyPrefix, databaseUrl: a.databaseUrl, env: { RATE_LIMIT_PER_MINUTE: '5' } });
  });
  after(async () => {
    await b?.close();
    await a?.close();
  });

  test('requests on either instance count against one limit', async () => {
    const codes: number[] = [];
    for (const app of [a, b, a, b, a]) codes.push((await app.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.read })).statusCode);
    assert.deepEqual(codes, [404, 404, 404, 404, 404]);
    const onB = await b.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.read });
    assertEnvelope(onB, 429, 'RATE_LIMITED');
    assert.ok(Number(onB.headers['retry-after']) >= 1);
    assertEnvelope(await a.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.read }), 429, 'RATE_LIMITED');
  });

  test('a separate key prefix has a separate limit', async () => {
    const c = await createTestApp({ backend: 'redis', databaseUrl: a.databaseUrl, env: { RATE_LIMIT_PER_MINUTE: '5' } });
    try {
      assert.equal((await c.request({ method: 'GET', url: '/api/metadata/none-01', key: KEYS.read })).statusCode, 404);
    } finally {
      await c.close();
    }
  });
});
