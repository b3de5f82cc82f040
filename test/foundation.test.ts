import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { backends, createTestApp, KEYS, type TestApp } from './support/app.js';
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import { loadConfig, readEnvironment, ConfigError, EnvSchema } from '../src/config.js';
import { uniqueName } from './support/databases.js';
import { cursorScope, encodeCursor } from '../src/http/cursor.js';

describe('configuration', () => {
  test('defaults match the contract', () => {
    const c = loadConfig({});
    assert.equal(c.port, 3000);
    assert.equal(c.host, '127.0.0.1');
    assert.equal(c.retentionTelemetryDays, 30);
    assert.equal(c.retentionRollupDays, 730);
    // Unset, rollup retention follows a longer raw retention rather than failing start-up.
    assert.equal(loadConfig({ RETENTION_TELEMETRY_DAYS: '3650' }).retentionRollupDays, 3650);
    assert.equal(loadConfig({ RETENTION_TELEMETRY_DAYS: '400' }).retentionRollupDays, 730);
    assert.equal(loadConfig({ RETENTION_TELEMETRY_DAYS: '400', RETENTION_ROLLUP_DAYS: '500' }).retentionRollupDays, 500);
    assert.equal(c.unknownNodes, 'reject');
    assert.equal(c.rateLimitPerMinute, 60000);
    assert.equal(c.ingestQueueMax, 1_000_000);
    assert.equal(c.redisKeyPrefix, 'vpp:');
    assert.equal(loadConfig({ REDIS_KEY_PREFIX: 'site-b:' }).redisKeyPrefix, 'site-b:');
    assert.ok(Object.isFrozen(c));
  });

  test('.env.example documents every variable', () => {
    const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8');
    for (const name of Object.keys(EnvSchema.properties)) assert.match(example, new RegExp(`^#? ?${name}=`, 'm'), name);
  });

  test('REDIS_KEY_PREFIX prefixes the Redis keys of the deployment', { skip: !process.env.REDIS_URL && 'needs REDIS_URL' }, async () => {
    const prefix = `${uniqueName('pfx')}:`;
    const t = await createTestApp({ backend: 'redis', env: { REDIS_KEY_PREFIX: prefix } });
    try {
      assert.equal(t.container.keyPrefix, prefix);
      await t.container.cache.set('probe', 'x', 60);
      const r = new Redis(process.env.REDIS_URL as string);
      try {
        assert.equal(await r.get(`${prefix}cache:probe`), 'x');
      } finally {
        r.disconnect();
      }
    } finally {
      await t.close();
    }
  });

  test('.env is read, and the process environment wins over it', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vpp-env-'));
    try {
      writeFileSync(path.join(dir, '.env'), 'PORT=4100\nLOG_LEVEL=debug\n');
      const c = loadConfig(readEnvironment(dir, { LOG_LEVEL: 'warn' }));
      assert.equal(c.port, 4100);
      assert.equal(c.logLevel, 'warn');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  for (const [name, value] of [
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['DATABASE_URL', 'mysql://x'],
    ['UNKNOWN_NODES', 'sometimes'],
    ['RATE_LIMIT_PER_MINUTE', '-1'],
    ['API_KEYS', 'shortkey1=admin+flying'],
    ['LOG_LEVEL', 'loud'],
    ['REDIS_KEY_PREFIX', 'has space'],
    // Rollups kept for less time than the raw readings they summarise.
    ['RETENTION_ROLLUP_DAYS', '20'],
  ] as const) {
    test(`a bad ${name} stops start-up naming the variable`, () => {
      assert.throws(
        () => loadConfig({ [name]: value }),
        (err: unknown) => err instanceof ConfigError && err.variable === name && err.message.includes(name),
      );
    });
  }
});

for (const backend of backends()) {
  describe(`http foundation (${backend})`, () => {
    let t: TestApp;
    before(async () => {
      t = await createTestApp({ backend });
    });
    after(async () => t?.close());

    test('health endpoints', async () => {
      const live = await t.request({ method: 'GET', url: '/health/live', key: null });
      assert.equal(live.statusCode, 200);
      const ready = await t.request({ method: 'GET', url: '/health/ready', key: null });
      assert.equal(ready.statusCode, 200, ready.body);
      const health = await t.request({ method: 'GET', url: '/health', key: null });
      assert.equal(health.statusCode, 200);
      const body = health.json();
      assert.equal(body.status, 'ok');
      assert.equal(body.checks.database.ok, true);
      assert.equal(body.checks.cache.kind, backend);
      assert.equal(typeof body.uptimeSeconds, 'number');
    });

    test('unknown route gets the error envelope', async () => {
      const r = await t.request({ method: 'GET', url: '/api/nope' });
      assert.equal(r.statusCode, 404);
      assert.equal(r.json().error.code, 'ROUTE_NOT_FOUND');
      assert.ok(Array.isArray(r.json().error.details));
    });

    test('errors raised before any route (bad percent-encoding, an over-long path parameter) get the envelope', async () => {
      const bad = await t.request({ method: 'GET', url: '/api/data-quality/%E0%A4%A' });
      assert.equal(bad.statusCode, 400, bad.body);
      assert.equal(bad.json().error.code, 'BAD_URL');
      assert.deepEqual(bad.json().error.details, []);
      const long = await t.request({ method: 'GET', url: `/api/data-quality/${'a'.repeat(300)}` });
      assert.equal(long.statusCode, 414, long.body);
      assert.equal(long.json().error.code, 'URI_TOO_LONG');
    });

    test('request ids and security headers', async () => {
      const r = await t.request({ method: 'GET', url: '/health/live', headers: { 'x-request-id': 'abc-123' } });
      assert.equal(r.headers['x-request-id'], 'abc-123');
      assert.equal(r.headers['x-content-type-options'], 'nosniff');
    });

    test('OpenAPI document is served', async () => {
      const r = await t.request({ method: 'GET', url: '/docs/openapi.json', key: null });
      assert.equal(r.statusCode, 200);
      assert.match(r.json().openapi, /^3\./);
      const page = await t.request({ method: 'GET', url: '/docs', key: null });
      assert.ok([200, 302].includes(page.statusCode));
    });

    test('OpenAPI declares the telemetry answers as sent: CSV/NDJSON content, X-Rollup-Tier, Retry-After, 413 for bodies', async () => {
      const paths = (await t.request({ method: 'GET', url: '/docs/openapi.json', key: null })).json().paths;
      const historical = paths['/api/telemetry/{nodeId}/historical'].get.responses;
      assert.deepEqual(Object.keys(historical[200].content).sort(), ['application/json', 'text/csv']);
      assert.ok(historical[200].headers['X-Rollup-Tier']);
      assert.deepEqual(Object.keys(paths['/api/telemetry/export'].get.responses[200].content).sort(), ['application/x-ndjson', 'text/csv']);
      const single = paths['/api/telemetry/{nodeId}'].post.responses;
      assert.deepEqual(Object.keys(single).sort(), ['201', '400', '401', '403', '413', '415', '429', '503']);
      for (const status of ['429', '503']) assert.equal(single[status].headers['Retry-After'].schema.type, 'integer', status);
      assert.ok(paths['/api/transactions'].post.responses[413]);
    });

    test('OpenAPI is 3.0 throughout: bounds as minimum + boolean exclusiveMinimum, one example per schema; ETag, SSE and /metrics declared', async () => {
      const doc = (await t.request({ method: 'GET', url: '/docs/openapi.json', key: null })).json();
      const stack: unknown[] = [doc];
      let bounds = 0;
      while (stack.length) {
        const v = stack.pop();
        if (!v || typeof v !== 'object') continue;
        const o = v as Record<string, unknown>;
        for (const k of ['exclusiveMinimum', 'exclusiveMaximum']) {
          if (k in o) {
            assert.equal(typeof o[k], 'boolean', JSON.stringify(o));
            bounds++;
          }
        }
        assert.ok(!Array.isArray(o.examples), JSON.stringify(o).slice(0, 200));
        stack.push(...Object.values(o));
      }
      assert.ok(bounds > 0);
      const capacity = doc.paths['/api/metadata'].post.requestBody.content['application/json'].schema.properties.capacityKw;
      assert.deepEqual([capacity.minimum, capacity.exclusiveMinimum], [0, true]);
      assert.ok(doc.paths['/api/metadata/{nodeId}'].get.responses[200].headers.ETag);
      assert.ok(doc.paths['/api/metadata/{nodeId}'].patch.responses[200].headers.ETag);
      assert.deepEqual(Object.keys(doc.paths['/api/realtime/stream'].get.responses[200].content), ['text/event-stream']);
      assert.deepEqual(Object.keys(doc.paths['/metrics'].get.responses[200].content), ['text/plain']);
      assert.deepEqual(Object.keys(doc.paths['/api/metadata/{nodeId}'].patch.requestBody.content), ['application/merge-patch+json', 'application/json']);
      assert.equal(doc.paths['/api/transactions/anchors'].post.requestBody.required, false);
      // The route schemas themselves keep JSON Schema's form (a capacity of 0 is still refused).
      const zero = await t.request({ method: 'POST', url: '/api/metadata', payload: { nodeId: 'oas-0', name: 'n', type: 'battery', status: 'active', capacityKw: 0 }, key: KEYS.admin });
      assert.equal(zero.statusCode, 400, zero.body);
    });

    test('metrics are Prometheus text', async () => {
      await t.request({ method: 'GET', url: '/health/live', key: null });
      const r = await t.request({ method: 'GET', url: '/metrics', key: null });
      assert.equal(r.statusCode, 200);
      assert.match(r.body, /http_request_duration_seconds_bucket/);
    });

    test('cache round trip and prefix invalidation', async () => {
      const c = t.container.cache;
      await c.set('a:1', 'one', 5);
      await c.set('a:2', 'two', 5);
      await c.set('b:1', 'three', 5);
      assert.equal(await c.get('a:1'), 'one');
      await c.delPrefix('a:');
      assert.equal(await c.get('a:1'), null);
      assert.equal(await c.get('a:2'), null);
      assert.equal(await c.get('b:1'), 'three');
      await c.del(['b:1']);
      assert.equal(await c.get('b:1'), null);
      await c.hashSet('h:1', [['a', 'uno'], ['b', 'dos']], 5);
      await c.hashSet('h:1', [['b', 'zwei'], ['c', 'drei']], 5);
      await c.hashSet('h:1', [], 5);
      assert.deepEqual([await c.hashGet('h:1', 'a'), await c.hashGet('h:1', 'b'), await c.hashGet('h:1', 'c'), await c.hashGet('h:1', 'd')], ['uno', 'zwei', 'drei', null]);
      assert.equal(await c.get('h:1'), null, 'a hash read as a string is a miss');
      await c.set('s:1', 'plain', 5);
      assert.equal(await c.hashGet('s:1', 'a'), null, 'a string read as a hash is a miss');
      await c.hashSet('h:2', [['a', 'x']], 0.05);
      await c.hashSet('h:3', [['a', 'y']], 5);
      await c.del(['h:3']);
      assert.equal(await c.hashGet('h:3', 'a'), null);
      await c.set('short', 'x', 0.05);
      await new Promise((r) => setTimeout(r, 120));
      assert.equal(await c.get('short'), null, 'entry expires after its TTL');
      assert.equal(await c.hashGet('h:2', 'a'), null, 'a hash expires after its TTL');
      assert.equal(await c.hashGet('h:1', 'a'), 'uno');
    });

    test('pub/sub delivers to subscribers', async () => {
      const got: string[] = [];
      const unsubscribe = await t.container.pubsub.subscribe('test-channel', (m) => got.push(m));
      await t.container.pubsub.publish('test-channel', 'hello');
      const deadline = Date.now() + 2000;
      while (got.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(got, ['hello']);
      await unsubscribe();
    });
  });
}

/** Sends raw bytes to the port, returns everything the server wrote before it closed the connection. */
function sendRaw(port: number, request: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    // Written, not ended: Node's server drops a request whose client half-closes before the answer.
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request));
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

describe('requests refused by the HTTP parser', () => {
  let t: TestApp;
  let port: number;
  before(async () => {
    t = await createTestApp();
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    port = (t.app.server.address() as AddressInfo).port;
  });
  after(async () => t?.close());

  const raw = (request: string) => sendRaw(port, request);

  test('a URL of 1,000 node ids of 64 characters fits (up to 128 KiB); beyond the limit 431, malformed 400, both in the envelope', async () => {
    const ids = Array.from({ length: 1000 }, (_, i) => `${String(i).padStart(4, '0')}${'x'.repeat(60)}`).join(',');
    const fits = await raw(`GET /api/telemetry/export?nodeIds=${ids}&from=0&to=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEYS.read}\r\nConnection: close\r\n\r\n`);
    assert.match(fits, /^HTTP\/1\.1 404 /, fits.slice(0, 300));
    assert.match(fits, /"code":"NODE_NOT_FOUND"/);
    const tooBig = await raw(`GET /api/telemetry/export?nodeIds=${'a'.repeat(140 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.match(tooBig, /^HTTP\/1\.1 431 /, tooBig.slice(0, 200));
    assert.equal(JSON.parse(tooBig.slice(tooBig.indexOf('\r\n\r\n') + 4)).error.code, 'HEADERS_TOO_LARGE');
    const malformed = await raw('GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n');
    assert.match(malformed, /^HTTP\/1\.1 400 /, malformed.slice(0, 200));
    assert.equal(JSON.parse(malformed.slice(malformed.indexOf('\r\n\r\n') + 4)).error.code, 'BAD_REQUEST');
  });
});

describe('requests that never finish, and unsupported expectations', () => {
  let t: TestApp;
  let port: number;
  before(async () => {
    t = await createTestApp({ appOptions: { requestTimeoutMs: 500, connectionsCheckingIntervalMs: 100 } });
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    port = (t.app.server.address() as AddressInfo).port;
  });
  after(async () => t?.close());

  const raw = (request: string) => sendRaw(port, request);

  test('a body that never arrives gets a 408 in the envelope once the request timeout passes, and the connection is closed', async () => {
    const t0 = Date.now();
    const answer = await raw(`POST /api/metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEYS.admin}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"`);
    assert.match(answer, /^HTTP\/1\.1 408 /, answer.slice(0, 200));
    assert.equal(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)).error.code, 'REQUEST_TIMEOUT');
    assert.ok(Date.now() - t0 < 10_000);
  });

  test('an unsupported Expect header gets a 417 in the envelope', async () => {
    const answer = await raw('GET /health/live HTTP/1.1\r\nHost: x\r\nExpect: weird\r\nConnection: close\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 417 /, answer.slice(0, 200));
    assert.equal(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)).error.code, 'EXPECTATION_FAILED');
  });
});

describe('inputs that reached the database or a formatter unchecked (found by fuzzing): 4xx, never 500', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

  test('a NUL character anywhere in node metadata: 400 naming its path', async () => {
    const base = { nodeId: 'nul-1', name: 'n', type: 'battery', status: 'active', capacityKw: 10 };
    for (const [extra, path] of [
      [{ name: 'a\u0000' }, '/name'],
      [{ tags: ['ok', '\u0000'] }, '/tags/1'],
      [{ technical: { deep: { list: [1, 'x\u0000'] } } }, '/technical/deep/list/1'],
      [{ technical: { 'k\u0000': 1 } }, '/technical/k\u0000'],
    ] as const) {
      const r = await t.request({ method: 'POST', url: '/api/metadata', payload: { ...base, ...extra }, key: KEYS.admin });
      assert.equal(r.statusCode, 400, r.body);
      assert.equal(r.json().error.code, 'VALIDATION_ERROR');
      assert.equal(r.json().error.details[0].path, path);
    }
    assert.equal((await t.request({ method: 'POST', url: '/api/metadata', payload: base, key: KEYS.admin })).statusCode, 201);
    const p = await t.request({ method: 'PATCH', url: '/api/metadata/nul-1', payload: { name: '\u0000' }, key: KEYS.admin });
    assert.equal(p.statusCode, 400, p.body);
  });

  test('cursors holding a NUL or a number no cursor holds: 400 INVALID_CURSOR, or an empty page past the range', async () => {
    // Tagged as the service tags them, so that what is refused is the key itself.
    const nul = [
      `/api/nodes/active?limit=1&cursor=${encodeCursor(cursorScope('nodes', 'active', undefined, 'active'), ['\u0000'])}`,
      `/api/nodes/by-type/battery?limit=1&cursor=${encodeCursor(cursorScope('nodes', 'by_type', 'battery', undefined), ['\u0000'])}`,
      `/api/nodes/nearby?lat=50&lon=8&radiusKm=20000&cursor=${encodeCursor(cursorScope('nearby', 50, 8, undefined), [50, '\u0000'])}`,
    ];
    for (const url of [...nul, `/api/nodes/active?limit=1&cursor=${b64(['a'])}`]) {
      const r = await t.request({ method: 'GET', url, key: KEYS.read });
      assert.equal(r.statusCode, 400, `${url}: ${r.body}`);
      assert.equal(r.json().error.code, 'INVALID_CURSOR');
    }
    await t.request({ method: 'POST', url: '/api/metadata', payload: { nodeId: 'cur-1', name: 'n', type: 'battery', status: 'active', capacityKw: 10 }, key: KEYS.admin });
    const range = 'from=2026-11-27T00:00:00Z&to=2026-11-28T00:00:00Z&interval=raw&limit=1';
    // Cursor texts as sent (JSON numbers past Date's range and past 2^53).
    // A genuine cursor's tag with the key's text replaced.
    const tagged = (key: string) => Buffer.from(Buffer.from(encodeCursor(cursorScope('raw', 'cur-1'), [0]), 'base64url').toString().replace(/,0\]$/, `,${key}]`)).toString('base64url');
    for (const c of ['8640000000000001', '9007199254740993', '99999999999999999999999', '-8640000000000001']) {
      for (const format of ['json', 'csv']) {
        const r = await t.request({ method: 'GET', url: `/api/telemetry/cur-1/historical?${range}&format=${format}&cursor=${tagged(c)}`, key: KEYS.read });
        assert.equal(r.statusCode, 200, `${c} ${format}: ${r.body}`);
      }
    }
    const inf = await t.request({ method: 'GET', url: `/api/telemetry/cur-1/historical?${range}&cursor=${tagged('1e999')}`, key: KEYS.read });
    assert.equal(inf.statusCode, 400, inf.body);
    assert.equal(inf.json().error.code, 'INVALID_CURSOR');
  });

  test('a repeated ?apiKey= on the event stream: 400, not a 500', async () => {
    const r = await t.request({ method: 'GET', url: '/api/realtime/stream?apiKey=a&apiKey=b', key: null });
    assert.equal(r.statusCode, 400, r.body);
    assert.equal(r.json().error.code, 'VALIDATION_ERROR');
  });
});

describe('access log', () => {
  test('at info: one line per failed request, path without its query; successful requests only at debug', async () => {
    const t = await createTestApp({ env: { LOG_LEVEL: 'info' } });
    try {
      await t.request({ method: 'GET', url: '/health/live', key: null });
      const missing = await t.request({ method: 'GET', url: '/api/metadata/no-such-node?apiKey=secret-in-query' });
      assert.equal(missing.statusCode, 404);
      const file = path.join(t.logDir, 'combined.log');
      let lines: { msg?: string; level?: number; path?: string; statusCode?: number; route?: string; ms?: number }[] = [];
      for (let i = 0; i < 100; i++) {
        lines = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((l) => l.msg === 'request');
        if (lines.length > 0) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 100));
      lines = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((l) => l.msg === 'request');
      assert.equal(lines.length, 1, JSON.stringify(lines));
      assert.equal(lines[0].level, 30);
      assert.equal(lines[0].statusCode, 404);
      assert.equal(lines[0].path, '/api/metadata/no-such-node');
      assert.equal(lines[0].route, '/api/metadata/:nodeId');
      assert.equal(typeof lines[0].ms, 'number');
      assert.ok(!readFileSync(file, 'utf8').includes('secret-in-query'), 'the query is not logged');
    } finally {
      await t.close();
    }
  });

  test('at debug: successful requests are logged too', async () => {
    const t = await createTestApp({ env: { LOG_LEVEL: 'debug' } });
    try {
      await t.request({ method: 'GET', url: '/health/live', key: null });
      const file = path.join(t.logDir, 'combined.log');
      let found = false;
      for (let i = 0; i < 100 && !found; i++) {
        found = readFileSync(file, 'utf8').split('\n').filter(Boolean).some((l) => {
          const o = JSON.parse(l) as { msg?: string; level?: number; statusCode?: number };
          return o.msg === 'request' && o.level === 20 && o.statusCode === 200;
        });
        if (!found) await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(found);
    } finally {
      await t.close();
    }
  });
});

describe('auth', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
    // A route that needs a scope, to exercise the hook without depending on a domain.
  });
  after(async () => t?.close());

  test('keys are checked only where a route asks for a scope', async () => {
    const r = await t.request({ method: 'GET', url: '/health', key: 'not-a-key' });
    assert.equal(r.statusCode, 200);
    assert.ok(KEYS.admin);
  });
});
