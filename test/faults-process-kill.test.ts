import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createTestDatabase, dropDatabase } from './support/databases.js';
import { startService, stopService, type ServiceProcess } from './support/processes.js';
import { missing, startLoad, storedKeys } from './support/ingest-load.js';

const KEY = 'faults-kill-admin-0001';

describe('the service process is killed with SIGKILL while 8 clients ingest in sync mode', { timeout: 90_000 }, () => {
  let databaseUrl: string;
  let tmp: string;
  let svc: ServiceProcess | undefined;
  const env = () => ({ DATABASE_URL: databaseUrl, API_KEYS: `${KEY}=admin`, UNKNOWN_NODES: 'accept', DATA_DIR: path.join(tmp, 'data'), LOG_DIR: path.join(tmp, 'logs'), RATE_LIMIT_PER_MINUTE: '0' });

  before(async () => {
    databaseUrl = await createTestDatabase(process.env.DATABASE_URL!, process.env.TEST_TEMPLATE_DATABASE);
    tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-fault-kill-'));
  });
  after(async () => {
    await stopService(svc);
    if (databaseUrl) await dropDatabase(databaseUrl);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('after restart every reading that got a 2xx is stored', async () => {
    const first = await startService(env());
    svc = first;
    const load = startLoad({ baseUrl: () => first.url, key: KEY, clients: 8, prefix: 'kill', timeoutMs: 5_000, pauseMs: 50 });
    let result;
    try {
      await load.waitAcked(400);
      first.kill('SIGKILL');
      const exit = await first.exited;
      assert.equal(exit.signal, 'SIGKILL');
    } finally {
      result = await load.stop();
    }
    const t0 = performance.now();
    svc = await startService(env());
    const restartMs = performance.now() - t0;
    const stored = await storedKeys(databaseUrl, 'kill');
    const lost = missing(result.acked, stored);
    const errors = result.outcomes.filter((o) => typeof o.status !== 'number').length;
    console.log(`# SIGKILL: ${result.acked.size} readings acknowledged, ${stored.size} stored (${stored.size - result.acked.size + lost.length} stored without an answer), ${lost.length} acknowledged but missing; ${errors} requests cut off; restart to ready ${Math.round(restartMs)} ms`);
    assert.ok(result.acked.size >= 400);
    assert.deepEqual(lost, []);
    for (const o of result.outcomes) if (typeof o.status === 'number') assert.equal(o.status, 201, JSON.stringify(o));
    // The restarted service serves what was stored.
    const r = await fetch(`${svc.url}/api/telemetry/kill-0/latest`, { headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(r.status, 200);
  });
});
