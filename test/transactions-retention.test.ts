import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { createNodes, refRecordHash, sql, withTriggersOff } from './transactions-reference.js';

const ZERO = '0'.repeat(64);
const DAY = 86_400_000;

type Rec = Record<string, unknown> & { id: string; sequence: number; hash: string; prevHash: string; recordedAt: string };

describe('transactions retention', () => {
  let t: TestApp;
  let recs: Rec[] = [];
  before(async () => {
    t = await createTestApp({ env: { RETENTION_TRANSACTIONS_DAYS: '30' } });
    await createNodes(t.databaseUrl, ['pv-1'], () => t.container.nodes.reloadAll());
    for (let i = 0; i < 20; i++) {
      const r = await t.request({ method: 'POST', url: '/api/transactions', key: KEYS.transactions, payload: { nodeId: 'pv-1', type: 'settlement', timestamp: Date.UTC(2026, 0, 1 + i), status: 'settled', amountEur: i, details: { day: i } } });
      assert.equal(r.statusCode, 201, r.body);
    }
    // Make records 1..12 sixty days old. recordedAt is hashed, so the history is re-chained with
    // the test's own implementation of the documented hash (which verify must then accept).
    const rows = (await t.request({ method: 'GET', url: '/api/transactions/pv-1?limit=1000' })).json().items.reverse() as Rec[];
    const old = Date.now() - 60 * DAY;
    let prev = ZERO;
    recs = rows.map((r) => {
      const recordedAt = r.sequence <= 12 ? new Date(old + r.sequence * 1000).toISOString() : r.recordedAt;
      const rec = { ...r, recordedAt, prevHash: prev };
      rec.hash = refRecordHash(rec);
      prev = rec.hash;
      return rec;
    });
    await withTriggersOff(t.databaseUrl, async (c) => {
      for (const r of recs) await c.query('UPDATE transactions SET recorded_at = $2, prev_hash = $3, hash = $4 WHERE sequence = $1', [r.sequence, r.recordedAt, r.prevHash, r.hash]);
      await c.query('UPDATE transaction_chain_head SET last_hash = $1', [prev]);
    });
  });
  after(async () => t?.close());

  const verify = async (qs = '') => (await t.request({ method: 'GET', url: `/api/transactions/verify${qs}` })).json();
  const prune = async () => {
    const s = await t.container.jobs.runNow('transactions-retention');
    assert.equal(s.outcome, 'ok', s.error);
    return s.details as { pruned: number; checkpointSequence: number | null };
  };

  test('the re-chained history verifies', async () => {
    assert.deepEqual([(await verify()).ok, (await verify()).checked], [true, 20]);
  });

  test('nothing is pruned before it is anchored', async () => {
    assert.equal((await prune()).pruned, 0);
    assert.equal((await sql<{ n: number }>(t.databaseUrl, 'SELECT count(*)::int AS n FROM transactions'))[0].n, 20);
  });

  test('old anchored records are pruned whole anchors at a time, leaving a checkpoint verify starts from', async () => {
    const a1 = (await t.request({ method: 'POST', url: '/api/transactions/anchors', payload: { toSequence: 8 } })).json();
    const a2 = (await t.request({ method: 'POST', url: '/api/transactions/anchors', payload: { toSequence: 15 } })).json();
    assert.deepEqual([a1.fromSequence, a1.toSequence, a2.fromSequence, a2.toSequence], [1, 8, 9, 15]);
    // Old prefix is 1..12: anchor 1..8 lies inside it, anchor 9..15 does not (13..15 are recent).
    const r = await prune();
    assert.deepEqual([r.pruned, r.checkpointSequence], [8, 8]);
    const left = await sql<{ sequence: number }>(t.databaseUrl, 'SELECT sequence::int FROM transactions ORDER BY sequence');
    assert.deepEqual(left.map((x) => x.sequence), Array.from({ length: 12 }, (_, i) => i + 9));

    const v = await verify();
    assert.equal(v.ok, true, v.reason);
    assert.equal(v.checked, 12);
    assert.deepEqual(v.checkpoint, { sequence: 8, hash: recs[7].hash });
    // A range reaching into the pruned part starts at the checkpoint.
    const v1 = await verify('?fromSequence=1&toSequence=10');
    assert.deepEqual([v1.ok, v1.checked, v1.fromSequence], [true, 2, 9]);
    // A range wholly inside the pruned part cannot be verified: 400, not "ok" over no records.
    const pruned = await t.request({ method: 'GET', url: '/api/transactions/verify?fromSequence=1&toSequence=5' });
    assert.equal(pruned.statusCode, 400, pruned.body);
    assert.equal(pruned.json().error.code, 'INVALID_RANGE');
    assert.equal(pruned.json().error.details[0].path, '/toSequence');
    assert.match(pruned.json().error.message, /pruned/);

    // Pruned records' proofs are gone; their anchor remains; retained records' proofs still work.
    const gone = await t.request({ method: 'GET', url: `/api/transactions/${recs[3].id}/proof` });
    assert.equal(gone.statusCode, 404);
    const kept = await t.request({ method: 'GET', url: `/api/transactions/anchors/${a1.anchorId}` });
    assert.equal(kept.statusCode, 200);
    assert.equal(kept.json().merkleRoot, a1.merkleRoot);
    assert.equal((await t.request({ method: 'GET', url: `/api/transactions/${recs[9].id}/proof` })).statusCode, 200);

    // A record following up a pruned one cannot name it any more.
    const rel = await t.request({ method: 'POST', url: '/api/transactions', key: KEYS.transactions, payload: { nodeId: 'pv-1', type: 'adjustment', timestamp: Date.UTC(2026, 1, 1), status: 'confirmed', relatesTo: recs[2].id } });
    assert.equal(rel.statusCode, 400);

    // Tampering right after the checkpoint is still caught.
    await withTriggersOff(t.databaseUrl, (c) => c.query('UPDATE transactions SET amount_eur = 99 WHERE sequence = 9'));
    const bad = await verify();
    assert.deepEqual([bad.ok, bad.firstBrokenSequence], [false, 9]);
    await withTriggersOff(t.databaseUrl, (c) => c.query('UPDATE transactions SET amount_eur = 8 WHERE sequence = 9'));
    assert.equal((await verify()).ok, true);

    // Running again prunes nothing more (9..15 holds recent records).
    assert.equal((await prune()).pruned, 0);
    const health = await t.request({ method: 'GET', url: '/health', key: null });
    assert.equal(health.json().checks.transactions.lastSequence, 20);
  });
});
