import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { createNodes, refMerkleRoot, refRecordHash, refRootFromProof, sql } from './transactions-reference.js';
import { inclusionProof, merkleRoot, rootFromProof } from '../src/transactions/merkle.js';
import { TransactionsService } from '../src/transactions/service.js';
import { Metrics } from '../src/metrics/metrics.js';

const ZERO = '0'.repeat(64);

describe('transactions: two service instances on one database', () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    a = await createTestApp({ backend: process.env.REDIS_URL ? 'redis' : 'memory' });
    b = await createTestApp({ backend: process.env.REDIS_URL ? 'redis' : 'memory', databaseUrl: a.databaseUrl, keyPrefix: a.keyPrefix });
    await createNodes(a.databaseUrl, ['chp-1', 'chp-2'], async () => {
      await a.container.nodes.reloadAll();
      await b.container.nodes.reloadAll();
    });
  });
  after(async () => {
    await b?.close();
    await a?.close();
  });

  const post = (t: TestApp, body: object) => t.request({ method: 'POST', url: '/api/transactions', payload: body, key: KEYS.transactions });

  test('50 concurrent appends split over both instances give a gap-free intact chain', async () => {
    const rs = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        post(i % 2 ? a : b, { nodeId: i % 3 ? 'chp-1' : 'chp-2', type: 'dispatch', timestamp: Date.UTC(2026, 10, 27, 10, i), status: 'confirmed', powerKw: i, details: { i } }),
      ),
    );
    assert.deepEqual(rs.map((r) => r.statusCode), Array(50).fill(201), rs.find((r) => r.statusCode !== 201)?.body);
    const rows = await sql<{ sequence: number; prev_hash: string; hash: string; id: string }>(a.databaseUrl, 'SELECT sequence::int, prev_hash, hash, id FROM transactions ORDER BY sequence');
    assert.deepEqual(rows.map((r) => r.sequence), Array.from({ length: 50 }, (_, i) => i + 1));
    // Every answer's record is in the table as returned, and links to its predecessor.
    const bySeq = new Map(rs.map((r) => [r.json().sequence as number, r.json() as Record<string, unknown> & { prevHash: string; hash: string }]));
    let prev = ZERO;
    for (const row of rows) {
      const rec = bySeq.get(row.sequence);
      assert.ok(rec, `sequence ${row.sequence} answered`);
      assert.equal(rec.prevHash, prev);
      assert.equal(rec.hash, row.hash);
      assert.equal(refRecordHash(rec), rec.hash);
      prev = row.hash;
    }
    for (const t of [a, b]) {
      const v = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
      assert.deepEqual([v.ok, v.checked], [true, 50]);
    }
  });

  test('concurrent retries of one transactionId on both instances create exactly one record', async () => {
    const body = { transactionId: 'settle-2026-11-27-chp-1', nodeId: 'chp-1', type: 'settlement', timestamp: '2026-11-27T23:00:00Z', status: 'settled', energyKwh: 1200, priceEurMwh: 81.5, amountEur: 97.8 };
    const rs = await Promise.all(Array.from({ length: 24 }, (_, i) => post(i % 2 ? a : b, body)));
    assert.equal(rs.filter((r) => r.statusCode === 201).length, 1);
    assert.equal(rs.filter((r) => r.statusCode === 200).length, 23);
    assert.equal(new Set(rs.map((r) => r.json().id)).size, 1);
    const n = await sql<{ n: number }>(a.databaseUrl, 'SELECT count(*)::int AS n FROM transactions WHERE transaction_id = $1', [body.transactionId]);
    assert.equal(n[0].n, 1);
  });

  test('concurrent appends and anchors from both instances: anchors tile the log without overlap', async () => {
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 30; i++) work.push(post(i % 2 ? a : b, { nodeId: 'chp-2', type: 'bid', timestamp: Date.UTC(2026, 10, 28, 0, i), status: 'pending', priceEurMwh: 50 + i }));
    for (let i = 0; i < 6; i++) work.push((i % 2 ? a : b).request({ method: 'POST', url: '/api/transactions/anchors' }));
    await Promise.all(work);
    await a.request({ method: 'POST', url: '/api/transactions/anchors' });
    const anchors = (await a.request({ method: 'GET', url: '/api/transactions/anchors?limit=1000' })).json().items.reverse() as { fromSequence: number; toSequence: number; merkleRoot: string }[];
    const rows = await sql<{ hash: string }>(a.databaseUrl, 'SELECT hash FROM transactions ORDER BY sequence');
    let next = 1;
    for (const an of anchors) {
      assert.equal(an.fromSequence, next);
      assert.equal(an.merkleRoot, refMerkleRoot(rows.slice(an.fromSequence - 1, an.toSequence).map((r) => r.hash)));
      next = an.toSequence + 1;
    }
    assert.equal(next, rows.length + 1);
    const v = (await b.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.deepEqual([v.ok, v.checked, v.anchorsChecked], [true, rows.length, anchors.length]);
  });
});

describe('merkle trees against the reference', () => {
  test('roots and every inclusion proof for 1..40 leaves', () => {
    for (let n = 1; n <= 40; n++) {
      const hashes = Array.from({ length: n }, (_, i) => refRecordHash({ sequence: i + 1 }, ZERO));
      const root = merkleRoot(hashes);
      assert.equal(root, refMerkleRoot(hashes), `n=${n}`);
      for (let i = 0; i < n; i++) {
        const p = inclusionProof(hashes, i);
        assert.ok(p.length <= Math.ceil(Math.log2(n)));
        assert.equal(refRootFromProof(hashes[i], p), root, `n=${n} i=${i}`);
        assert.equal(rootFromProof(hashes[i], p), root);
        // A proof does not carry over to another leaf.
        if (n > 1) assert.notEqual(refRootFromProof(hashes[(i + 1) % n], p), root);
      }
    }
  });
});

describe('transactions: optimistic and locked writers together', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
    await createNodes(t.databaseUrl, ['wind-1'], () => t.container.nodes.reloadAll());
  });
  after(async () => t?.close());

  test('a lock-only writer and two optimistic writers interleave into one intact chain', async () => {
    const c = t.container;
    const make = (optimisticAttempts: number | undefined, maxGroupSize: number) =>
      new TransactionsService({ db: c.db, pubsub: c.pubsub, nodes: c.nodes, metrics: new Metrics({ defaults: false }), logger: c.logger, unknownNodes: 'reject', retentionDays: 730, optimisticAttempts, maxGroupSize });
    const writers = [make(0, 3), make(undefined, 1), make(undefined, 7)];
    const results = await Promise.all(
      Array.from({ length: 90 }, (_, i) =>
        writers[i % 3].append({ transactionId: `w-${i % 45}`, nodeId: 'wind-1', type: 'bid', timestamp: Date.UTC(2026, 10, 27, 0, i % 45), status: 'pending', priceEurMwh: i % 45 }),
      ),
    );
    // 45 distinct keys, each sent twice through different writers: 45 records.
    assert.equal(results.filter((r) => r.created).length, 45);
    const rows = await sql<{ sequence: number }>(t.databaseUrl, 'SELECT sequence::int FROM transactions ORDER BY sequence');
    assert.deepEqual(rows.map((r) => r.sequence), Array.from({ length: 45 }, (_, i) => i + 1));
    const v = await writers[0].verify();
    assert.deepEqual([v.ok, v.checked], [true, 45]);
    for (const r of results) assert.equal(refRecordHash({ ...r.record }), r.record.hash);
  });
});
