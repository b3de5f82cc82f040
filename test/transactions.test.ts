import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createTestApp, KEYS, type TestApp } from './support/app.js';
import { createNodes, refMerkleRoot, refRecordHash, refRootFromProof, sql, withTriggersOff } from './transactions-reference.js';

const run = promisify(execFile);
const ZERO = '0'.repeat(64);

type Rec = Record<string, unknown> & { id: string; sequence: number; hash: string; prevHash: string; nodeId: string; type: string; timestamp: string };

function tx(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { nodeId: 'bat-1', type: 'dispatch', timestamp: '2026-11-27T10:00:00Z', status: 'confirmed', ...overrides };
}

describe('transactions', () => {
  let t: TestApp;
  const post = (body: unknown, key: string = KEYS.transactions) => t.request({ method: 'POST', url: '/api/transactions', payload: body as object, key });
  const all = async (): Promise<Rec[]> => {
    const rows = await sql<{ sequence: string }>(t.databaseUrl, 'SELECT sequence FROM transactions ORDER BY sequence');
    const out: Rec[] = [];
    for (const nodeId of ['bat-1', 'bat-2', 'verify']) {
      let cursor: string | null = null;
      do {
        const r = await t.request({ method: 'GET', url: `/api/transactions?nodeId=${nodeId}&limit=1000${cursor ? `&cursor=${cursor}` : ''}` });
        assert.equal(r.statusCode, 200, r.body);
        out.push(...(r.json().items as Rec[]));
        cursor = r.json().nextCursor;
      } while (cursor);
    }
    assert.equal(out.length, rows.length);
    return out.sort((a, b) => a.sequence - b.sequence);
  };

  before(async () => {
    t = await createTestApp();
    await createNodes(t.databaseUrl, ['bat-1', 'bat-2', 'verify'], () => t.container.nodes.reloadAll());
  });
  after(async () => t?.close());

  test('append: 201 with sequence, links and a hash anyone can recompute', async () => {
    const body = tx({ transactionId: 'first-1', market: 'aFRR', energyKwh: 250, powerKw: 1000, priceEurMwh: 92.1, amountEur: 23.03, details: { b: 1, a: [1.5, 'x', null, { z: true, y: -0.25 }], 'ü': 'é"\n' } });
    const r = await post(body);
    assert.equal(r.statusCode, 201, r.body);
    const rec = r.json() as Rec;
    assert.equal(rec.sequence, 1);
    assert.equal(rec.prevHash, ZERO);
    assert.match(rec.id, /^[0-9a-f-]{36}$/);
    assert.equal(rec.timestamp, '2026-11-27T10:00:00.000Z');
    assert.equal(rec.amountEur, 23.03);
    assert.equal(rec.market, 'aFRR');
    assert.equal(rec.relatesTo, null);
    assert.deepEqual(rec.details, body.details);
    assert.ok(Math.abs(Date.parse(rec.recordedAt as string) - Date.now()) < 60_000);
    assert.equal(rec.hash, refRecordHash(rec));

    const r2 = await post(tx({ timestamp: Date.parse('2026-11-27T10:15:00Z'), type: 'bid', status: 'pending' }));
    assert.equal(r2.statusCode, 201, r2.body);
    const rec2 = r2.json() as Rec;
    assert.equal(rec2.sequence, 2);
    assert.equal(rec2.prevHash, rec.hash);
    assert.equal(rec2.transactionId, null);
    assert.equal(rec2.energyKwh, null);
    assert.equal(rec2.details, null);
    assert.equal(rec2.timestamp, '2026-11-27T10:15:00.000Z');
    assert.equal(rec2.hash, refRecordHash(rec2));
  });

  test('numbers and text that are easy to mangle survive storage with their hash intact', async () => {
    const details = { sum: 0.1 + 0.2, tiny: 1e-7, huge: 1e21, least: 5e-324, big: Number("12345678901234567890"), neg0: -0, emoji: '⚡🔋', esc: 'tab\tquote"back\\slash\u0001', nested: { b: [true, false, null], a: {} }, '': 'empty key', 'é': 1, e: 2 };
    const r = await post(tx({ nodeId: 'bat-2', energyKwh: 1e-7, powerKw: -0, priceEurMwh: 0.1 + 0.2, market: 'intraday ⚡', details }));
    assert.equal(r.statusCode, 201, r.body);
    const rec = r.json() as Rec;
    assert.equal(rec.powerKw, 0);
    assert.equal(rec.hash, refRecordHash(rec));
    const stored = (await t.request({ method: 'GET', url: '/api/transactions/bat-2?limit=1' })).json().items[0] as Rec;
    assert.equal(stored.id, rec.id);
    assert.deepEqual(stored, rec);
    assert.equal(refRecordHash(stored), rec.hash);
    const v = (await t.request({ method: 'GET', url: `/api/transactions/verify?fromSequence=${rec.sequence}&toSequence=${rec.sequence}` })).json();
    assert.deepEqual([v.ok, v.checked], [true, 1]);
  });

  test('relatesTo: by id or transactionId of the same node; another node or unknown is 400', async () => {
    const base = (await post(tx({ transactionId: 'bid-77', type: 'bid', status: 'pending' }))).json() as Rec;
    const byId = await post(tx({ type: 'bid', status: 'accepted', relatesTo: base.id }));
    assert.equal(byId.statusCode, 201, byId.body);
    assert.equal(byId.json().relatesTo, base.id);
    const byKey = await post(tx({ type: 'bid', status: 'rejected', relatesTo: 'bid-77' }));
    assert.equal(byKey.statusCode, 201, byKey.body);
    assert.equal(byKey.json().relatesTo, base.id, 'a transactionId reference is stored as the record id');
    const upper = await post(tx({ type: 'bid', status: 'rejected', relatesTo: base.id.toUpperCase() }));
    assert.equal(upper.statusCode, 201, upper.body);
    assert.equal(upper.json().relatesTo, base.id);

    for (const [relatesTo, nodeId] of [[base.id, 'bat-2'], ['00000000-0000-4000-8000-000000000000', 'bat-1'], ['no-such-key', 'bat-1']]) {
      const r = await post(tx({ nodeId, relatesTo }));
      assert.equal(r.statusCode, 400, r.body);
      assert.equal(r.json().error.code, 'INVALID_RELATES_TO');
      assert.equal(r.json().error.details[0].path, '/relatesTo');
    }

    // A UUID that is a bat-1 record's id and, as its transactionId, a bat-2 record's key names the record of the node asking.
    const shared = base.id;
    const other = (await post(tx({ nodeId: 'bat-2', transactionId: shared, type: 'bid', status: 'pending' }))).json() as Rec;
    const onBat2 = await post(tx({ nodeId: 'bat-2', type: 'bid', status: 'accepted', relatesTo: shared }));
    assert.equal(onBat2.statusCode, 201, onBat2.body);
    assert.equal(onBat2.json().relatesTo, other.id);
    const onBat1 = await post(tx({ nodeId: 'bat-1', type: 'bid', status: 'accepted', relatesTo: shared }));
    assert.equal(onBat1.statusCode, 201, onBat1.body);
    assert.equal(onBat1.json().relatesTo, base.id);
  });

  test('bad inputs get 400 with the envelope and a path per problem', async () => {
    const big = 'x'.repeat(17 * 1024);
    let deep: unknown = 1;
    for (let i = 0; i < 40; i++) deep = { d: deep };
    const cases: [string, unknown, string][] = [
      ['missing status', { nodeId: 'bat-1', type: 'bid', timestamp: '2026-11-27T10:00:00Z' }, '/status'],
      ['missing nodeId', { type: 'bid', timestamp: '2026-11-27T10:00:00Z', status: 'pending' }, '/nodeId'],
      ['unknown type', tx({ type: 'refund' }), '/type'],
      ['unknown status', tx({ status: 'done' }), '/status'],
      ['unknown field', tx({ currency: 'USD' }), '/currency'],
      ['bad nodeId', tx({ nodeId: '-bad id' }), '/nodeId'],
      ['unknown node', tx({ nodeId: 'ghost-9' }), '/nodeId'],
      ['timestamp text', tx({ timestamp: 'yesterday' }), '/timestamp'],
      ['timestamp no offset', tx({ timestamp: '2026-11-27T10:00:00' }), '/timestamp'],
      ['timestamp impossible day', tx({ timestamp: '2026-02-31T10:00:00Z' }), '/timestamp'],
      ['timestamp negative', tx({ timestamp: -5 }), '/timestamp'],
      ['timestamp fractional ms', tx({ timestamp: 1.5 }), '/timestamp'],
      ['timestamp epoch ms as a string', tx({ timestamp: '1795773600000' }), '/timestamp'],
      ['timestamp digits as a string', tx({ timestamp: '002026' }), '/timestamp'],
      ['number as string', tx({ energyKwh: '250' }), '/energyKwh'],
      ['huge number', tx({ powerKw: 1e300 }), '/powerKw'],
      ['amount inconsistent', tx({ energyKwh: 250, priceEurMwh: 92.1, amountEur: 23.05 }), '/amountEur'],
      ['details not object', tx({ details: [1, 2] }), '/details'],
      ['details too big', tx({ details: { note: big } }), '/details'],
      ['details too deep', tx({ details: deep }), '/details'],
      ['details NUL', tx({ details: { s: 'a\u0000b' } }), '/details/s'],
      ['details lone surrogate', tx({ details: { s: '\ud800x' } }), '/details/s'],
      ['details other currency', tx({ details: { currency: 'USD' } }), '/details/currency'],
      ['market empty', tx({ market: '' }), '/market'],
      ['market too long', tx({ market: 'm'.repeat(65) }), '/market'],
      ['market control char', tx({ market: 'FCR\n' }), '/market'],
      ['market lone surrogate', tx({ market: 'FCR\udc00' }), '/market'],
      ['transactionId with space', tx({ transactionId: 'a b' }), '/transactionId'],
      ['transactionId too long', tx({ transactionId: 'k'.repeat(129) }), '/transactionId'],
      ['relatesTo not string', tx({ relatesTo: 5 }), '/relatesTo'],
    ];
    for (const [name, body, pathWanted] of cases) {
      const r = await post(body);
      assert.equal(r.statusCode, 400, `${name}: ${r.body}`);
      const e = r.json().error;
      assert.equal(typeof e.code, 'string', name);
      assert.equal(typeof e.message, 'string', name);
      assert.ok(Array.isArray(e.details) && e.details.length > 0, `${name}: details`);
      assert.ok(e.details.some((d: { path: string }) => d.path === pathWanted || d.path.startsWith(`${pathWanted}/d/`)), `${name}: wanted ${pathWanted}, got ${JSON.stringify(e.details)}`);
    }
    // Bodies JSON cannot carry as numbers: 1e400 parses to Infinity.
    for (const raw of ['{"nodeId":"bat-1","type":"bid","timestamp":"2026-11-27T10:00:00Z","status":"pending","amountEur":1e400}', '{"nodeId":', '', '{"__proto__":{"admin":true},"nodeId":"bat-1","type":"bid","timestamp":"2026-11-27T10:00:00Z","status":"pending"}']) {
      const r = await t.request({ method: 'POST', url: '/api/transactions', payload: raw, headers: { 'content-type': 'application/json' }, key: KEYS.transactions });
      assert.equal(r.statusCode, 400, `${raw}: ${r.body}`);
      assert.equal(typeof r.json().error.code, 'string');
    }
    // Keys the prototype-poisoning guard refuses: a 400 that names them and where, not "not valid JSON".
    for (const [raw, path] of [
      ['{"nodeId":"bat-1","type":"bid","timestamp":"2026-11-27T10:00:00Z","status":"pending","details":{"a":{"__proto__":{"x":1}}}}', '/details/a/__proto__'],
      ['{"nodeId":"bat-1","type":"bid","timestamp":"2026-11-27T10:00:00Z","status":"pending","details":{"constructor":{"prototype":{}}}}', '/details/constructor'],
    ]) {
      const r = await t.request({ method: 'POST', url: '/api/transactions', payload: raw, headers: { 'content-type': 'application/json' }, key: KEYS.transactions });
      assert.equal(r.statusCode, 400, r.body);
      assert.equal(r.json().error.code, 'VALIDATION_ERROR');
      assert.deepEqual(r.json().error.details.map((d: { path: string }) => d.path), [path]);
      assert.match(r.json().error.message, /__proto__/);
    }
    const harmless = await t.request({ method: 'POST', url: '/api/transactions', payload: '{"nodeId":"bat-1","type":"bid","timestamp":"2026-11-27T10:00:00Z","status":"pending","details":{"constructor":"x","prototype":1}}', headers: { 'content-type': 'application/json' }, key: KEYS.transactions });
    assert.equal(harmless.statusCode, 201, harmless.body);
    const count = await sql<{ n: number }>(t.databaseUrl, 'SELECT count(*)::int AS n FROM transactions WHERE node_id = $1', ['ghost-9']);
    assert.equal(count[0].n, 0);
  });

  test('amounts: a cent of tolerance, the rule applies only when all three are given', async () => {
    assert.equal((await post(tx({ energyKwh: 250, priceEurMwh: 92.1, amountEur: 23.025 }))).statusCode, 201);
    assert.equal((await post(tx({ energyKwh: 250, priceEurMwh: 92.1, amountEur: 23.02 }))).statusCode, 201);
    assert.equal((await post(tx({ energyKwh: -100, priceEurMwh: -20, amountEur: 2 }))).statusCode, 201);
    assert.equal((await post(tx({ energyKwh: 250, amountEur: 999 }))).statusCode, 201);
    assert.equal((await post(tx({ energyKwh: 250, priceEurMwh: 92.1, amountEur: 23.036 }))).statusCode, 400);
  });

  test('scopes: write needs transactions:write, reads need read, anchors need admin', async () => {
    assert.equal((await post(tx(), KEYS.read)).statusCode, 403);
    assert.equal((await t.request({ method: 'POST', url: '/api/transactions', payload: tx(), key: null })).statusCode, 401);
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/bat-1', key: KEYS.transactions })).statusCode, 403);
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/bat-1', key: KEYS.read })).statusCode, 200);
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/verify', key: KEYS.read })).statusCode, 200);
    assert.equal((await t.request({ method: 'POST', url: '/api/transactions/anchors', key: KEYS.transactions })).statusCode, 403);
    assert.equal((await t.request({ method: 'POST', url: '/api/transactions/anchors', key: KEYS.writer })).statusCode, 403);
    const patch = await t.request({ method: 'PATCH', url: '/api/transactions/anchors/00000000-0000-4000-8000-000000000000', payload: { network: 'x', txHash: 'y', blockNumber: 1 }, key: KEYS.read });
    assert.equal(patch.statusCode, 403);
  });

  test('idempotency: same body 200 with the original, different body 409', async () => {
    const body = tx({ transactionId: 'idem-1', type: 'settlement', status: 'settled', energyKwh: 10, priceEurMwh: 100, amountEur: 1 });
    const a = await post(body);
    assert.equal(a.statusCode, 201);
    const b = await post(body);
    assert.equal(b.statusCode, 200);
    assert.deepEqual(b.json(), a.json());
    // The same instant written as epoch milliseconds is the same body.
    const c = await post({ ...body, timestamp: Date.parse(body.timestamp as string) });
    assert.equal(c.statusCode, 200);
    assert.equal(c.json().id, a.json().id);
    for (const changed of [{ amountEur: 1.001 }, { status: 'failed' }, { nodeId: 'bat-2' }, { details: { x: 1 } }]) {
      const d = await post({ ...body, ...changed });
      assert.equal(d.statusCode, 409, JSON.stringify(changed));
      assert.equal(d.json().error.code, 'TRANSACTION_ID_CONFLICT');
    }
    const n = await sql<{ n: number }>(t.databaseUrl, "SELECT count(*)::int AS n FROM transactions WHERE transaction_id = 'idem-1'");
    assert.equal(n[0].n, 1);
  });

  test('idempotency under 30 concurrent retries: exactly one record', async () => {
    const body = tx({ transactionId: 'race-1', type: 'dispatch', powerKw: 500 });
    const rs = await Promise.all(Array.from({ length: 30 }, () => post(body)));
    const codes = rs.map((r) => r.statusCode).sort();
    assert.deepEqual(codes, [...Array(29).fill(200), 201].sort());
    assert.equal(new Set(rs.map((r) => r.json().id)).size, 1);
    // Concurrent conflicting bodies: one wins, the rest are 409.
    const mixed = await Promise.all(Array.from({ length: 10 }, (_, i) => post(tx({ transactionId: 'race-2', powerKw: i }))));
    assert.equal(mixed.filter((r) => r.statusCode === 201).length, 1);
    assert.equal(mixed.filter((r) => r.statusCode === 409).length, 9);
    const n = await sql<{ n: number }>(t.databaseUrl, "SELECT count(*)::int AS n FROM transactions WHERE transaction_id IN ('race-1','race-2')");
    assert.equal(n[0].n, 2);
  });

  test('publishes transactions.appended after commit', async () => {
    const got: string[] = [];
    const unsubscribe = await t.container.pubsub.subscribe('transactions.appended', (m) => got.push(m));
    try {
      const r = await post(tx({ nodeId: 'bat-2', type: 'settlement', timestamp: '2026-11-28T00:00:00+01:00', status: 'settled' }));
      assert.equal(r.statusCode, 201);
      for (let i = 0; i < 50 && got.length === 0; i++) await new Promise((res) => setTimeout(res, 20));
      assert.deepEqual(got.map((m) => JSON.parse(m)), [{ nodeId: 'bat-2', type: 'settlement', timestamp: '2026-11-27T23:00:00.000Z' }]);
    } finally {
      await unsubscribe();
    }
  });

  test('listing: newest first, filters, keyset pages, 404 for unknown nodes', async () => {
    const base = Date.parse('2026-10-01T00:00:00Z');
    const types = ['dispatch', 'bid', 'settlement', 'adjustment'];
    // Timestamps out of insertion order and with ties, so (timestamp, sequence) ordering is exercised.
    const made: Rec[] = [];
    for (let i = 0; i < 23; i++) {
      const r = await post(tx({ nodeId: 'bat-2', type: types[i % 4], timestamp: base + ((i * 7) % 11) * 3_600_000 }));
      assert.equal(r.statusCode, 201);
      made.push(r.json());
    }
    const from = base + 2 * 3_600_000;
    const to = base + 9 * 3_600_000;
    const want = made
      .filter((r) => Date.parse(r.timestamp) >= from && Date.parse(r.timestamp) < to && r.type !== 'bid')
      .sort((a, b) => Date.parse(b.timestamp) - Date.parse(a.timestamp) || b.sequence - a.sequence)
      .map((r) => r.sequence);
    for (const type of ['dispatch', 'settlement', 'adjustment']) {
      const seen: number[] = [];
      let cursor: string | null = null;
      do {
        const r = await t.request({ method: 'GET', url: `/api/transactions/bat-2?type=${type}&from=${new Date(from).toISOString()}&to=${to}&limit=2${cursor ? `&cursor=${cursor}` : ''}`, key: KEYS.read });
        assert.equal(r.statusCode, 200, r.body);
        assert.ok(r.json().items.length <= 2);
        seen.push(...r.json().items.map((x: Rec) => x.sequence));
        cursor = r.json().nextCursor;
      } while (cursor);
      const wantType = want.filter((s) => made.find((m) => m.sequence === s)?.type === type);
      assert.deepEqual(seen, wantType, type);
    }
    const allPage = await t.request({ method: 'GET', url: '/api/transactions/bat-2?limit=1000' });
    const items = allPage.json().items as Rec[];
    for (let i = 1; i < items.length; i++) {
      const a = items[i - 1];
      const b = items[i];
      assert.ok(Date.parse(a.timestamp) > Date.parse(b.timestamp) || (a.timestamp === b.timestamp && a.sequence > b.sequence));
    }
    assert.equal(allPage.json().nextCursor, null);
    // A cursor belongs to its node and type; from/to may move between pages.
    const dispatchCursor = (await t.request({ method: 'GET', url: '/api/transactions/bat-2?type=dispatch&limit=1', key: KEYS.read })).json().nextCursor as string;
    assert.ok(dispatchCursor);
    for (const url of [`/api/transactions/bat-2?cursor=${dispatchCursor}`, `/api/transactions/bat-2?type=bid&cursor=${dispatchCursor}`, `/api/transactions?nodeId=bat-1&type=dispatch&cursor=${dispatchCursor}`, '/api/transactions/bat-2?cursor=']) {
      const r = await t.request({ method: 'GET', url, key: KEYS.read });
      assert.equal(r.statusCode, 400, `${url}: ${r.body}`);
      assert.equal(r.json().error.code, 'INVALID_CURSOR');
    }
    const moved = await t.request({ method: 'GET', url: `/api/transactions?nodeId=bat-2&type=dispatch&from=${from}&cursor=${dispatchCursor}`, key: KEYS.read });
    assert.equal(moved.statusCode, 200, moved.body);

    const unknown = await t.request({ method: 'GET', url: '/api/transactions/nobody-here' });
    assert.equal(unknown.statusCode, 404);
    assert.equal(unknown.json().error.code, 'NODE_NOT_FOUND');
    for (const url of ['/api/transactions/bat-2?cursor=abc', '/api/transactions/bat-2?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z', '/api/transactions/bat-2?from=nope', '/api/transactions/bat-2?type=refund', '/api/transactions/bat-2?limit=0', '/api/transactions/bat-2?limit=1001', '/api/transactions/bat-2?limit=0x10', '/api/transactions/bat-2?limit=1e1000', '/api/transactions/bat-2?color=red', '/api/transactions']) {
      const r = await t.request({ method: 'GET', url });
      assert.equal(r.statusCode, 400, `${url}: ${r.body}`);
      assert.ok(Array.isArray(r.json().error.details));
    }
  });

  test('a node named "verify" is reached through ?nodeId=; /verify is the chain check', async () => {
    const r = await post(tx({ nodeId: 'verify', type: 'adjustment' }));
    assert.equal(r.statusCode, 201, r.body);
    const listed = await t.request({ method: 'GET', url: '/api/transactions?nodeId=verify' });
    assert.equal(listed.statusCode, 200);
    assert.deepEqual(listed.json().items.map((x: Rec) => x.id), [r.json().id]);
    const v = await t.request({ method: 'GET', url: '/api/transactions/verify' });
    assert.equal(v.statusCode, 200);
    assert.equal(v.json().ok, true);
  });

  test('verify recomputes the chain, and names the first tampered sequence', async () => {
    const recs = await all();
    assert.ok(recs.length > 30);
    // Independent recomputation of every link.
    let prev = ZERO;
    recs.forEach((r, i) => {
      assert.equal(r.sequence, i + 1);
      assert.equal(r.prevHash, prev);
      assert.equal(refRecordHash(r), r.hash);
      prev = r.hash;
    });
    const full = await t.request({ method: 'GET', url: '/api/transactions/verify', key: KEYS.read });
    assert.deepEqual({ ok: full.json().ok, checked: full.json().checked }, { ok: true, checked: recs.length });
    const part = await t.request({ method: 'GET', url: '/api/transactions/verify?fromSequence=5&toSequence=9' });
    assert.deepEqual({ ok: part.json().ok, checked: part.json().checked }, { ok: true, checked: 5 });
    for (const url of ['/api/transactions/verify?fromSequence=9&toSequence=5', '/api/transactions/verify?fromSequence=0', '/api/transactions/verify?fromSequence=x']) {
      assert.equal((await t.request({ method: 'GET', url })).statusCode, 400, url);
    }
    // A range with no record in the log is not "ok" over nothing; sequences past 2^53 - 1 or not in digits are refused.
    const head = recs[recs.length - 1].sequence;
    for (const [url, path] of [
      [`/api/transactions/verify?fromSequence=${head + 1}`, '/fromSequence'],
      ['/api/transactions/verify?fromSequence=99999999&toSequence=999999999', '/fromSequence'],
      ['/api/transactions/verify?fromSequence=9007199254740993', '/fromSequence'],
      ['/api/transactions/verify?toSequence=99999999999999999999', '/toSequence'],
      ['/api/transactions/verify?fromSequence=1e1', '/fromSequence'],
    ]) {
      const r = await t.request({ method: 'GET', url });
      assert.equal(r.statusCode, 400, `${url}: ${r.body}`);
      assert.equal(r.json().error.details[0].path, path, url);
    }
    const capped = (await t.request({ method: 'GET', url: `/api/transactions/verify?fromSequence=${head}&toSequence=${head + 100}` })).json();
    assert.deepEqual([capped.ok, capped.checked, capped.toSequence], [true, 1, head]);

    // The database refuses changes...
    await assert.rejects(sql(t.databaseUrl, 'UPDATE transactions SET amount_eur = 1 WHERE sequence = 7'), /append-only/);
    await assert.rejects(sql(t.databaseUrl, 'DELETE FROM transactions WHERE sequence = 7'), /append-only/);
    await assert.rejects(sql(t.databaseUrl, 'TRUNCATE transactions'), /append-only/);
    // ...but someone who disables the trigger can change a field: verify names that record.
    await withTriggersOff(t.databaseUrl, (c) => c.query("UPDATE transactions SET amount_eur = 1000000, details = '{\"forged\":true}' WHERE sequence = 7"));
    const v = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.equal(v.ok, false);
    assert.equal(v.firstBrokenSequence, 7);
    assert.equal(v.checked, 6);
    assert.equal(typeof v.reason, 'string');
    const before = (await t.request({ method: 'GET', url: '/api/transactions/verify?toSequence=6' })).json();
    assert.equal(before.ok, true);
    const afterIt = (await t.request({ method: 'GET', url: '/api/transactions/verify?fromSequence=8' })).json();
    assert.equal(afterIt.ok, true, 'records after the tampered one still link to its stored hash');

    // Rewriting the record and its hash consistently breaks the next link instead.
    const r7 = recs[6];
    const forged = { ...r7, amountEur: 1000000, details: { forged: true } };
    const forgedHash = refRecordHash(forged);
    await withTriggersOff(t.databaseUrl, (c) => c.query('UPDATE transactions SET hash = $1 WHERE sequence = 7', [forgedHash]));
    const v2 = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.equal(v2.ok, false);
    assert.equal(v2.firstBrokenSequence, 8);

    // Restore, then delete a record from the middle: the gap is named.
    await withTriggersOff(t.databaseUrl, (c) => c.query("UPDATE transactions SET amount_eur = $2, details = $3, hash = $4 WHERE sequence = $1", [7, r7.amountEur, r7.details === null ? null : JSON.stringify(r7.details), r7.hash]));
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/verify' })).json().ok, true);
    const row12 = await sql(t.databaseUrl, 'SELECT * FROM transactions WHERE sequence = 12');
    await withTriggersOff(t.databaseUrl, (c) => c.query('DELETE FROM transactions WHERE sequence = 12'));
    const v3 = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.equal(v3.ok, false);
    assert.equal(v3.firstBrokenSequence, 12);
    const cols = Object.keys(row12[0]);
    await sql(t.databaseUrl, `INSERT INTO transactions (${cols.join(',')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(',')})`, cols.map((k) => (k === 'details' && row12[0][k] !== null ? JSON.stringify(row12[0][k]) : row12[0][k])));
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/verify' })).json().ok, true);

    // Deleting the newest record is caught by the chain head.
    const last = recs[recs.length - 1];
    const lastRow = await sql(t.databaseUrl, 'SELECT * FROM transactions WHERE sequence = $1', [last.sequence]);
    await withTriggersOff(t.databaseUrl, (c) => c.query('DELETE FROM transactions WHERE sequence = $1', [last.sequence]));
    const v4 = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.equal(v4.ok, false);
    assert.equal(v4.firstBrokenSequence, last.sequence);
    const lcols = Object.keys(lastRow[0]);
    await sql(t.databaseUrl, `INSERT INTO transactions (${lcols.join(',')}) VALUES (${lcols.map((_, i) => `$${i + 1}`).join(',')})`, lcols.map((k) => (k === 'details' && lastRow[0][k] !== null ? JSON.stringify(lastRow[0][k]) : lastRow[0][k])));
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/verify' })).json().ok, true);
  });

  test('anchoring, proofs checked independently and by scripts/verify-proof.mjs', async () => {
    const recs = await all();
    const a1 = await t.request({ method: 'POST', url: '/api/transactions/anchors' });
    assert.equal(a1.statusCode, 201, a1.body);
    const anchor = a1.json();
    assert.equal(anchor.fromSequence, 1);
    assert.equal(anchor.toSequence, recs.length);
    assert.equal(anchor.merkleRoot, refMerkleRoot(recs.map((r) => r.hash)));

    // An empty body sent as JSON is no body at all.
    const again = await t.request({ method: 'POST', url: '/api/transactions/anchors', payload: '', headers: { 'content-type': 'application/json' } });
    assert.equal(again.statusCode, 409);
    assert.equal(again.json().error.code, 'NOTHING_TO_ANCHOR');

    // Not yet anchored: no proof.
    const fresh = (await post(tx({ type: 'settlement', status: 'settled', amountEur: 12.5 }))).json() as Rec;
    const np = await t.request({ method: 'GET', url: `/api/transactions/${fresh.id}/proof`, key: KEYS.read });
    assert.equal(np.statusCode, 404);
    assert.equal(np.json().error.code, 'NOT_ANCHORED');
    for (let i = 0; i < 4; i++) await post(tx({ type: 'dispatch', powerKw: i }));
    const bad = await t.request({ method: 'POST', url: '/api/transactions/anchors', payload: { toSequence: recs.length } });
    assert.equal(bad.statusCode, 400);
    const a2 = (await t.request({ method: 'POST', url: '/api/transactions/anchors', payload: { toSequence: recs.length + 3 } })).json();
    assert.deepEqual([a2.fromSequence, a2.toSequence], [recs.length + 1, recs.length + 3]);
    const a3 = (await t.request({ method: 'POST', url: '/api/transactions/anchors' })).json();
    assert.deepEqual([a3.fromSequence, a3.toSequence], [recs.length + 4, recs.length + 5]);
    const recs2 = await all();
    assert.equal(a2.merkleRoot, refMerkleRoot(recs2.slice(recs.length, recs.length + 3).map((r) => r.hash)));

    // Every record's proof folds to its anchor's root (reference implementation).
    for (const r of recs2) {
      const p = await t.request({ method: 'GET', url: `/api/transactions/${r.id}/proof`, key: KEYS.read });
      assert.equal(p.statusCode, 200, p.body);
      const body = p.json();
      assert.deepEqual(body.record, r);
      const a = r.sequence <= anchor.toSequence ? anchor : r.sequence <= a2.toSequence ? a2 : a3;
      assert.equal(body.anchor.anchorId, a.anchorId);
      assert.equal(body.anchor.merkleRoot, a.merkleRoot);
      assert.equal(refRootFromProof(refRecordHash(body.record), body.proof.siblings), a.merkleRoot, `sequence ${r.sequence}`);
    }

    // Chain info: once; same values again is fine; different values 409.
    const chain = { network: 'ethereum-sepolia', txHash: '0xabc123', blockNumber: 5_123_456 };
    const p1 = await t.request({ method: 'PATCH', url: `/api/transactions/anchors/${anchor.anchorId}`, payload: chain });
    assert.equal(p1.statusCode, 200, p1.body);
    assert.equal(p1.json().txHash, '0xabc123');
    assert.equal(p1.json().merkleRoot, anchor.merkleRoot);
    assert.equal((await t.request({ method: 'PATCH', url: `/api/transactions/anchors/${anchor.anchorId}`, payload: chain })).statusCode, 200);
    const p3 = await t.request({ method: 'PATCH', url: `/api/transactions/anchors/${anchor.anchorId}`, payload: { ...chain, blockNumber: 1 } });
    assert.equal(p3.statusCode, 409);
    assert.equal(p3.json().error.code, 'ANCHOR_ALREADY_RECORDED');
    assert.equal((await t.request({ method: 'PATCH', url: '/api/transactions/anchors/00000000-0000-4000-8000-000000000000', payload: chain })).statusCode, 404);
    for (const [url, payload] of [
      ['/api/transactions/anchors/not-a-uuid', chain],
      [`/api/transactions/anchors/${a2.anchorId}`, { network: 'x', txHash: 'y' }],
      [`/api/transactions/anchors/${a2.anchorId}`, { ...chain, blockNumber: -1 }],
      [`/api/transactions/anchors/${a2.anchorId}`, { ...chain, extra: 1 }],
    ] as const) {
      const r = await t.request({ method: 'PATCH', url, payload });
      assert.equal(r.statusCode, 400, `${url} ${JSON.stringify(payload)}: ${r.body}`);
    }
    const got = await t.request({ method: 'GET', url: `/api/transactions/anchors/${anchor.anchorId}`, key: KEYS.read });
    assert.equal(got.json().blockNumber, 5_123_456);
    const listed = await t.request({ method: 'GET', url: '/api/transactions/anchors?limit=2' });
    assert.deepEqual(listed.json().items.map((a: { anchorId: string }) => a.anchorId), [a3.anchorId, a2.anchorId]);
    const next = await t.request({ method: 'GET', url: `/api/transactions/anchors?limit=2&cursor=${listed.json().nextCursor}` });
    assert.deepEqual(next.json().items.map((a: { anchorId: string }) => a.anchorId), [anchor.anchorId]);
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/00000000-0000-4000-8000-000000000000/proof' })).statusCode, 404);
    assert.equal((await t.request({ method: 'GET', url: '/api/transactions/xyz/proof' })).statusCode, 400);

    // The standalone verifier, on a saved proof; and on tampered copies.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vpp-proof-'));
    try {
      const target = recs2[5];
      const proof = (await t.request({ method: 'GET', url: `/api/transactions/${target.id}/proof` })).json();
      assert.equal(proof.anchor.network, 'ethereum-sepolia');
      const file = path.join(dir, 'proof.json');
      await writeFile(file, JSON.stringify(proof, null, 2));
      const ok = await run(process.execPath, ['scripts/verify-proof.mjs', file, '--root', anchor.merkleRoot]);
      assert.match(ok.stdout, /OK/);
      const tampered: [string, unknown][] = [
        ['amount', { ...proof, record: { ...proof.record, amountEur: 1e6 } }],
        ['sibling', { ...proof, proof: { ...proof.proof, siblings: proof.proof.siblings.map((s: { position: string; hash: string }, i: number) => (i === 0 ? { ...s, hash: 'f'.repeat(64) } : s)) } }],
        ['side', { ...proof, proof: { ...proof.proof, siblings: proof.proof.siblings.map((s: { position: string; hash: string }, i: number) => (i === 1 ? { ...s, position: s.position === 'left' ? 'right' : 'left' } : s)) } }],
      ];
      for (const [name, doc] of tampered) {
        const f = path.join(dir, `${name}.json`);
        await writeFile(f, JSON.stringify(doc));
        await assert.rejects(run(process.execPath, ['scripts/verify-proof.mjs', f]), (err: { code?: number }) => err.code === 1, name);
      }
      await assert.rejects(run(process.execPath, ['scripts/verify-proof.mjs', file, '--root', 'a'.repeat(64)]), (err: { code?: number }) => err.code === 1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }

    // Verify also recomputes the anchors' roots: a chain rewritten consistently from sequence 3 on is caught by the anchor.
    const v = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.equal(v.ok, true);
    assert.equal(v.anchorsChecked, 3);
  });

  test('a chain rewritten consistently after the fact verifies link by link but fails its anchor', async () => {
    const recs = await all();
    const anchors = (await t.request({ method: 'GET', url: '/api/transactions/anchors' })).json().items as { fromSequence: number; toSequence: number }[];
    const first = anchors[anchors.length - 1];
    let prev = recs[1].hash;
    await withTriggersOff(t.databaseUrl, async (c) => {
      for (const r of recs.slice(2)) {
        const forged = { ...r, prevHash: prev, ...(r.sequence === 3 ? { amountEur: 42 } : {}) };
        const h = refRecordHash(forged);
        await c.query('UPDATE transactions SET amount_eur = $2, prev_hash = $3, hash = $4 WHERE sequence = $1', [r.sequence, forged.amountEur, prev, h]);
        prev = h;
      }
      await c.query('UPDATE transaction_chain_head SET last_hash = $1', [prev]);
    });
    const v = (await t.request({ method: 'GET', url: '/api/transactions/verify' })).json();
    assert.equal(v.ok, false);
    assert.equal(v.firstBrokenSequence, first.fromSequence);
    assert.match(v.reason, /Merkle root/);
    // Intact before it: the records ahead of the anchor's first sequence.
    assert.equal(v.checked, first.fromSequence - 1);
  });
});

describe('transactions and the node registry', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => t?.close());

  test('a node created after start (registry not told) is found on first use', async () => {
    const body = tx({ nodeId: 'late-node-1' });
    const before = await t.request({ method: 'POST', url: '/api/transactions', payload: body });
    assert.equal(before.statusCode, 400);
    assert.equal(before.json().error.code, 'UNKNOWN_NODE');
    await sql(t.databaseUrl, `INSERT INTO nodes (node_id, type, status, capacity_kw, doc) VALUES ('late-node-1', 'wind', 'active', 10, '{}'::jsonb)`);
    const r = await t.request({ method: 'POST', url: '/api/transactions', payload: body });
    assert.equal(r.statusCode, 201, r.body);
  });
});

describe('transactions with UNKNOWN_NODES=accept', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ env: { UNKNOWN_NODES: 'accept' } });
  });
  after(async () => t?.close());

  test('records of nodes without metadata are accepted and listed', async () => {
    const r = await t.request({ method: 'POST', url: '/api/transactions', payload: tx({ nodeId: 'no-meta-1' }) });
    assert.equal(r.statusCode, 201, r.body);
    const l = await t.request({ method: 'GET', url: '/api/transactions/no-meta-1' });
    assert.equal(l.json().items.length, 1);
  });
});
