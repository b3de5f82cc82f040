import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startOwnPostgres, startService, stopService, sleep, type OwnPostgres, type ServiceProcess } from './support/processes.js';
import { missing, startLoad, storedKeys, type Load } from './support/ingest-load.js';

const KEY = 'faults-pg-admin-0001';

describe('PostgreSQL stops during ingestion', { timeout: 90_000 }, () => {
  let pgOwn: OwnPostgres;
  let svc: ServiceProcess;
  let tmp: string;

  before(async () => {
    pgOwn = await startOwnPostgres();
    tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-fault-pg-svc-'));
    svc = await startService({ DATABASE_URL: pgOwn.url, API_KEYS: `${KEY}=admin`, UNKNOWN_NODES: 'accept', DATA_DIR: path.join(tmp, 'data'), LOG_DIR: path.join(tmp, 'logs'), RATE_LIMIT_PER_MINUTE: '0' });
  });
  after(async () => {
    await stopService(svc);
    await pgOwn?.destroy();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('503 + Retry-After fast while it is down, never a 500 or a hang; ready again within 5 s; nothing acknowledged is lost', async () => {
    const load = startLoad({ baseUrl: () => svc.url, key: KEY, clients: 4, prefix: 'pgf', timeoutMs: 8_000 });
    try {
      await outageScenario(load);
    } finally {
      await load.stop();
    }
  });

  async function outageScenario(load: Load): Promise<void> {
    await load.waitAcked(200);

    const stopAt = performance.now();
    await pgOwn.stop();
    const stoppedAt = performance.now();
    // Let the clients meet the outage for a while.
    await sleep(2_500);
    assert.equal(svc.proc.exitCode, null, `the service died with the database:\n${svc.output()}`);
    const ready = await fetch(`${svc.url}/health/ready`, { signal: AbortSignal.timeout(5_000) });
    assert.equal(ready.status, 503, 'not ready while the database is down');
    // Both 503s carry the error envelope beside their check results.
    assert.equal(((await ready.json()) as { error: { code: string } }).error.code, 'NOT_READY');
    const health = await fetch(`${svc.url}/health`, { signal: AbortSignal.timeout(5_000) });
    assert.equal(health.status, 503);
    const down = (await health.json()) as { status: string; error: { code: string; details: unknown[] } };
    assert.equal(down.status, 'down');
    assert.equal(down.error.code, 'DATABASE_UNAVAILABLE');
    assert.deepEqual(down.error.details, []);
    const live = await fetch(`${svc.url}/health/live`);
    assert.equal(live.status, 200, 'the process itself is alive');

    const outageStart = stoppedAt + 500; // requests answered after this met a database that was already gone
    const duringOutage = load.result.outcomes.filter((o) => o.at > outageStart);
    assert.ok(duringOutage.length >= 8, `only ${duringOutage.length} requests during the outage`);
    for (const o of duringOutage) {
      assert.equal(o.status, 503, `during the outage: ${JSON.stringify(o)}`);
      assert.ok(Number(o.retryAfter) >= 1, `Retry-After on ${JSON.stringify(o)}`);
    }
    const slowest = Math.max(...duringOutage.map((o) => o.latencyMs));
    assert.ok(slowest < 4_000, `a 503 took ${Math.round(slowest)} ms`);

    const restartAt = performance.now();
    await pgOwn.start();
    const upAt = performance.now();
    // Recovery: first acknowledged reading and readiness after the database accepts connections again.
    const ackedBefore = load.result.acked.size;
    let firstAck = Infinity;
    let readyAt = Infinity;
    while (performance.now() - upAt < 10_000 && (firstAck === Infinity || readyAt === Infinity)) {
      if (firstAck === Infinity && load.result.acked.size > ackedBefore) firstAck = performance.now();
      if (readyAt === Infinity) {
        const r = await fetch(`${svc.url}/health/ready`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
        if (r?.status === 200) readyAt = performance.now();
      }
      await sleep(25);
    }
    await load.waitAcked(load.result.acked.size + 100);
    const result = await load.stop();

    const ingestRecoveryMs = firstAck - upAt;
    const readyRecoveryMs = readyAt - upAt;
    console.log(`# postgres fault: stop took ${Math.round(stoppedAt - stopAt)} ms, restart ${Math.round(upAt - restartAt)} ms; ` +
      `ingestion recovered ${Math.round(ingestRecoveryMs)} ms and /health/ready ${Math.round(readyRecoveryMs)} ms after the database was back; ` +
      `slowest 503 ${Math.round(slowest)} ms; ${duringOutage.length} requests during the outage`);
    assert.ok(ingestRecoveryMs < 5_000, `ingestion recovered after ${Math.round(ingestRecoveryMs)} ms`);
    assert.ok(readyRecoveryMs < 5_000, `ready after ${Math.round(readyRecoveryMs)} ms`);

    const statuses = new Set(result.outcomes.map((o) => o.status));
    for (const s of statuses) assert.ok(s === 201 || s === 503, `unexpected answer ${s}`);

    const stored = await storedKeys(pgOwn.url, 'pgf');
    const lost = missing(result.acked, stored);
    console.log(`# postgres fault: ${result.acked.size} readings acknowledged, ${stored.size} stored, ${lost.length} acknowledged but missing`);
    assert.deepEqual(lost, []);
  }
});
