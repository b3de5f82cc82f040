import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createTestDatabase, dropDatabase } from './support/databases.js';
import { sleep, startService, stopService, type ServiceProcess } from './support/processes.js';
import { missing, startLoad, storedKeys } from './support/ingest-load.js';

const KEY = 'faults-term-admin-0001';
const BATCH = 1_000;

interface BatchAnswer {
  status: number | 'network-error';
  body?: { stored?: number; queued?: number };
}

async function postBatch(url: string, nodeId: string, from: number, n: number, mode: 'sync' | 'async'): Promise<BatchAnswer> {
  const readings = Array.from({ length: n }, (_, i) => ({ nodeId, timestamp: from + i * 1000, powerKw: i % 100 }));
  try {
    const r = await fetch(`${url}/api/telemetry/batch?mode=${mode}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ readings }),
      signal: AbortSignal.timeout(20_000),
    });
    return { status: r.status, body: (await r.json()) as BatchAnswer['body'] };
  } catch {
    return { status: 'network-error' };
  }
}

describe('SIGTERM drains', { timeout: 90_000 }, () => {
  let databaseUrl: string;
  let tmp: string;
  let svc: ServiceProcess | undefined;

  before(async () => {
    databaseUrl = await createTestDatabase(process.env.DATABASE_URL!, process.env.TEST_TEMPLATE_DATABASE);
    tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-fault-term-'));
    // No REDIS_URL: the async queue is the PostgreSQL one, drained by this process.
    svc = await startService({ DATABASE_URL: databaseUrl, API_KEYS: `${KEY}=admin`, UNKNOWN_NODES: 'accept', DATA_DIR: path.join(tmp, 'data'), LOG_DIR: path.join(tmp, 'logs'), RATE_LIMIT_PER_MINUTE: '0' });
  });
  after(async () => {
    await stopService(svc);
    if (databaseUrl) await dropDatabase(databaseUrl);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('in-flight requests finish, queued readings are written, the process exits 0', async () => {
    const s = svc!;
    const base = Date.now() - 3 * 3_600_000;
    const load = startLoad({ baseUrl: () => s.url, key: KEY, clients: 8, prefix: 'term', timeoutMs: 10_000, pauseMs: 50 });
    let result;
    let inFlight: BatchAnswer[];
    const queued: { nodeId: string; from: number }[] = [];
    try {
      await load.waitAcked(8, 40_000);
      // Readings accepted into the async queue shortly before the signal.
      for (let i = 0; i < 4; i++) {
        const a = await postBatch(s.url, `term-async-${i}`, base, 500, 'async');
        assert.equal(a.status, 202, JSON.stringify(a));
        assert.equal(a.body?.queued, 500);
        queued.push({ nodeId: `term-async-${i}`, from: base });
      }
      // Two large synchronous batches that are being processed when SIGTERM arrives.
      const batches = [0, 1].map((i) => postBatch(s.url, `term-batch-${i}`, base, BATCH, 'sync'));
      await sleep(40);
      s.kill('SIGTERM');
      inFlight = await Promise.all(batches);
    } finally {
      result = await load.stop();
    }
    const exit = await s.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, s.output());

    for (const b of inFlight) {
      assert.equal(b.status, 200, `in-flight batch answered ${JSON.stringify(b)}`);
      assert.equal(b.body?.stored, BATCH);
    }
    const stored = await storedKeys(databaseUrl, 'term');
    const lost = missing(result.acked, stored);
    assert.deepEqual(lost, [], 'sync readings acknowledged before shutdown');
    const statuses = new Set(result.outcomes.map((o) => o.status));
    for (const st of statuses) assert.ok(st === 201 || st === 503 || st === 'network-error', `answer during shutdown: ${st}`);

    const count = async (prefix: string) => [...stored].filter((k) => k.startsWith(prefix)).length;
    assert.equal(await count('term-batch-'), 2 * BATCH, 'in-flight batches stored');
    assert.equal(await count('term-async-'), queued.length * 500, 'every queued reading written before exit');
    console.log(`# SIGTERM: exit 0; ${result.acked.size} sync readings acknowledged, all stored; 2 in-flight batches of ${BATCH} answered 200; ${queued.length * 500} queued readings written; answers seen: ${[...statuses].join(', ')}`);
  });
});
