import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestApp } from './support/app.js';

test('the OpenAPI document describes the transaction routes', async () => {
  const t = await createTestApp();
  try {
    const r = await t.request({ method: 'GET', url: '/docs/openapi.json', key: null });
    assert.equal(r.statusCode, 200);
    const paths = r.json().paths as Record<string, Record<string, unknown>>;
    for (const [p, method] of [
      ['/api/transactions', 'post'],
      ['/api/transactions', 'get'],
      ['/api/transactions/verify', 'get'],
      ['/api/transactions/anchors', 'post'],
      ['/api/transactions/anchors/{anchorId}', 'patch'],
      ['/api/transactions/{id}/proof', 'get'],
      ['/api/transactions/{nodeId}', 'get'],
    ]) {
      assert.ok(paths[p]?.[method], `${method} ${p}`);
    }
    const rec = (paths['/api/transactions'].post as { responses: Record<string, { content: Record<string, { schema: { properties: Record<string, { nullable?: boolean }> } }> }> }).responses['201'].content['application/json'].schema;
    assert.equal(rec.properties.market.nullable, true);
  } finally {
    await t.close();
  }
});
