import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { backends, createTestApp, KEYS, redisSkip, type TestApp } from './support/app.js';
import { insertNodes, minutesAgo } from './support/telemetry-nodes.js';
import { decodeRows, type IngestQueue } from '../src/telemetry/queue.js';
import type { GroupCommitWriter } from '../src/telemetry/writer.js';
import type { IngestRow } from '../src/telemetry/validate.js';
import type { RedisQueue } from '../src/telemetry/queue-redis.js';

const iso = (ms: number) => new Date(ms).toISOString();

function queueOf(t: TestApp): IngestQueue {
  const d = t.container.domains.find((x) => 'queue' in x) as unknown as { queue: IngestQueue };
  return d.queue;
}

async function countRows(t: TestApp, nodeId: string): Promise<number> {
  const { rows } = await t.container.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM telemetry WHERE node_id = $1', [nodeId]);
  return rows[0].n;
}

async function waitFor(cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail('condition not met in time');
}

function batch(nodeId: string, n: number, start: number, power = 1) {
  return { readings: Array.from({ length: n }, (_, i) => ({ nodeId, timestamp: iso(start + i * 1000), powerKw: power + i })) };
}

for (const backend of backends()) {
  const expectedKind = backend === 'redis' ? 'redis' : 'postgres';
  describe(`async ingestion (${backend} → ${expectedKind} queue)`, () => {
    let t: TestApp;
    before(async () => {
      t = await createTestApp({ backend, env: { INGEST_QUEUE_MAX: '50' } });
      await insertNodes(t, [{ nodeId: 'aq-1' }, { nodeId: 'aq-2' }, { nodeId: 'aq-3' }]);
    });
    after(async () => t?.close());

    const postAsync = (payload: unknown) => t.request({ method: 'POST', url: '/api/telemetry/batch?mode=async', payload: payload as object, key: KEYS.telemetry });

    test('uses the expected backend and reports a queue check in /health', async () => {
      assert.equal(queueOf(t).kind, expectedKind);
      const h = await t.request({ method: 'GET', url: '/health', key: null });
      const q = h.json().checks.queue;
      assert.equal(q.ok, true);
      assert.equal(q.backend, expectedKind);
      assert.equal(q.depth, 0);
      assert.equal(q.max, 50);
    });

    test('202 with queued and rejected; the readings are written by the consumer, duplicates idempotent', async () => {
      const start = minutesAgo(20);
      const body = batch('aq-1', 10, start);
      body.readings.push({ nodeId: 'ghost', timestamp: iso(start), powerKw: 1 });
      const r = await postAsync(body);
      assert.equal(r.statusCode, 202, r.body);
      assert.equal(r.json().queued, 10);
      assert.equal(r.json().rejected.length, 1);
      assert.equal(r.json().rejected[0].index, 10);
      await waitFor(async () => (await countRows(t, 'aq-1')) === 10);
      // The same batch again (an at-least-once redo looks like this): nothing changes.
      const again = await postAsync(batch('aq-1', 10, start));
      assert.equal(again.statusCode, 202);
      await waitFor(async () => (await queueOf(t).stats()).depth === 0);
      assert.equal(await countRows(t, 'aq-1'), 10);
      const { rows } = await t.container.db.pool.query('SELECT duplicates FROM telemetry_quality_keys WHERE node_id = $1', ['aq-1']);
      assert.equal(rows.reduce((s: number, x: { duplicates: number }) => s + x.duplicates, 0), 10);
      const latest = await t.request({ method: 'GET', url: '/api/telemetry/aq-1/latest', key: KEYS.read });
      assert.equal(latest.json().timestamp, iso(start + 9000));
    });

    test('all readings invalid: 400, nothing queued', async () => {
      const r = await postAsync({ readings: [{ nodeId: 'aq-1', powerKw: 1 }] });
      assert.equal(r.statusCode, 400);
      assert.equal((await queueOf(t).stats()).depth, 0);
    });

    test('the bound: 503 + Retry-After above INGEST_QUEUE_MAX, never a silent drop; a batch larger than the whole bound is a 413', async () => {
      const q = queueOf(t);
      await q.stop(); // hold the consumer so the queue fills
      try {
        const start = minutesAgo(40);
        let r = await postAsync(batch('aq-2', 51, start));
        assert.equal(r.statusCode, 413);
        assert.equal(r.headers['retry-after'], undefined);
        assert.equal(r.json().error.code, 'BATCH_ABOVE_QUEUE_MAX');
        r = await postAsync(batch('aq-2', 30, start));
        assert.equal(r.statusCode, 202);
        r = await postAsync(batch('aq-2', 20, start + 30_000));
        assert.equal(r.statusCode, 202);
        r = await postAsync(batch('aq-2', 1, start + 60_000));
        assert.equal(r.statusCode, 503);
        assert.ok(Number(r.headers['retry-after']) > 0);
        assert.equal(r.json().error.code, 'QUEUE_FULL');
        const s = await q.stats();
        assert.equal(s.depth, 50);
        assert.ok(s.lagSeconds >= 0);
        const h = await t.request({ method: 'GET', url: '/health', key: null });
        assert.equal(h.json().checks.queue.depth, 50);
        assert.equal(h.json().checks.queue.ok, false);
        const m = await t.request({ method: 'GET', url: '/metrics', key: null });
        assert.match(m.body, /telemetry_ingest_queue_depth_readings 50/);
      } finally {
        await q.start();
      }
      await waitFor(async () => (await countRows(t, 'aq-2')) === 50);
      await waitFor(async () => (await queueOf(t).stats()).depth === 0);
    });

    test('graceful stop: in-flight sync writes are committed and answered; queued readings are written or stay in the durable queue', async () => {
      const r = await postAsync(batch('aq-3', 25, minutesAgo(60)));
      assert.equal(r.statusCode, 202);
      // Sync writes in flight at shutdown are answered and committed, too.
      const sync = t.request({ method: 'POST', url: '/api/telemetry/batch', payload: batch('aq-3', 5, minutesAgo(90)), key: KEYS.telemetry });
      await t.app.close();
      assert.equal((await sync).statusCode, 200);
      for (const d of t.container.domains) if ('queue' in d) await d.stop?.();
      const n = await countRows(t, 'aq-3');
      // The queue is durable: what a stopped consumer did not take is still there for the next start.
      const depth = (await queueOf(t).stats()).depth;
      assert.equal(n + depth, 30);
    });
  });
}

describe('async ingestion on Redis: crash recovery and outage', { skip: redisSkip }, () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ backend: 'redis' });
    await insertNodes(t, [{ nodeId: 'rq-1' }]);
  });
  after(async () => t?.close());

  /**
   * With this instance's consumer stopped, queues `n` readings of `nodeId` and lets another
   * consumer take the entry and die without acknowledging it; returns the entry's rows.
   */
  async function takenByDeadConsumer(q: RedisQueue, nodeId: string, n: number, start: number): Promise<IngestRow[]> {
    await q.stop();
    const r = await t.request({ method: 'POST', url: '/api/telemetry/batch?mode=async', payload: batch(nodeId, n, start), key: KEYS.telemetry });
    assert.equal(r.statusCode, 202);
    const other = new Redis(process.env.REDIS_URL as string);
    try {
      const got = (await other.xreadgroup('GROUP', 'ingest', `dead-${nodeId}`, 'COUNT', 10, 'STREAMS', `${t.keyPrefix}ingest:stream`, '>')) as [string, [string, string[]][]][] | null;
      assert.equal(got?.[0][1].length, 1);
      const fields = got![0][1][0][1];
      return decodeRows(fields[fields.indexOf('p') + 1]);
    } finally {
      other.disconnect();
    }
  }

  test("a crashed consumer's pending entries are reclaimed (XAUTOCLAIM) and written", async () => {
    const q = queueOf(t) as RedisQueue;
    await takenByDeadConsumer(q, 'rq-1', 7, minutesAgo(15));
    await q.start();
    assert.equal(await countRows(t, 'rq-1'), 0);
    await new Promise((res) => setTimeout(res, 30));
    const redone = await q.reclaim(10);
    assert.equal(redone, 1);
    assert.equal(await countRows(t, 'rq-1'), 7);
    const s = await q.stats();
    assert.equal(s.depth, 0);
    assert.equal(s.lagSeconds, 0);
  });

  test('an entry a dead consumer wrote but did not acknowledge is redone without counting its rows as duplicates; rows it had not written are written', async () => {
    await insertNodes(t, [{ nodeId: 'rq-2' }]);
    const q = queueOf(t) as RedisQueue;
    const start = minutesAgo(25);
    // The dead consumer had committed four of the entry's six readings (as they were queued,
    // arrival stamps included) before it died.
    const rows = await takenByDeadConsumer(q, 'rq-2', 6, start);
    const writer = (t.container.domains.find((x) => 'writer' in x) as unknown as { writer: GroupCommitWriter }).writer;
    assert.deepEqual(await writer.submit(rows.slice(0, 4)), { stored: 4, duplicates: 0 });
    await q.start();
    await new Promise((res) => setTimeout(res, 30));
    assert.equal(await q.reclaim(10), 1);
    assert.equal(await countRows(t, 'rq-2'), 6);
    const { rows: qd } = await t.container.db.pool.query<{ d: number }>('SELECT coalesce(sum(duplicates), 0)::int AS d FROM telemetry_quality_keys WHERE node_id = $1', ['rq-2']);
    assert.equal(qd[0].d, 0);
    // A client's identical re-send (a new request, a new arrival stamp) is still a duplicate.
    const again = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: batch('rq-2', 6, start), key: KEYS.telemetry });
    assert.deepEqual({ stored: again.json().stored, duplicates: again.json().duplicates }, { stored: 0, duplicates: 6 });
  });

  test('Redis down: async ingestion answers 503, never accepts into nothing', async () => {
    t.container.redis?.disconnect();
    const r = await t.request({ method: 'POST', url: '/api/telemetry/batch?mode=async', payload: batch('rq-1', 3, minutesAgo(5)), key: KEYS.telemetry });
    assert.equal(r.statusCode, 503);
    assert.ok(r.headers['retry-after']);
    assert.equal(r.json().error.code, 'QUEUE_UNAVAILABLE');
  });
});
