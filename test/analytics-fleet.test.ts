import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { backends, createTestApp, KEYS, type TestApp } from './support/app.js';
import { energyForNodes } from '../src/analytics/energy-many.js';
import { energyByPeriods, localDays } from '../src/telemetry/energy.js';
import { close, localMidnight, refFigures, refMoney, rng, type RefReading, type RefTx } from './analytics-reference.js';

interface FleetNode {
  nodeId: string;
  type: string;
  status: string;
  capacityKw: number;
  timezone: string;
  telemetryIntervalSeconds: number;
}

const FLEET: FleetNode[] = [
  { nodeId: 'b1', type: 'battery', status: 'active', capacityKw: 50, timezone: 'America/New_York', telemetryIntervalSeconds: 60 },
  { nodeId: 'b2', type: 'battery', status: 'active', capacityKw: 100, timezone: 'Europe/Berlin', telemetryIntervalSeconds: 60 },
  { nodeId: 'b3', type: 'battery', status: 'maintenance', capacityKw: 150, timezone: 'UTC', telemetryIntervalSeconds: 300 },
  { nodeId: 'b4', type: 'battery', status: 'active', capacityKw: 200, timezone: 'Asia/Kolkata', telemetryIntervalSeconds: 60 },
  { nodeId: 'b5', type: 'battery', status: 'inactive', capacityKw: 250, timezone: 'Australia/Lord_Howe', telemetryIntervalSeconds: 120 },
  { nodeId: 'b-old', type: 'battery', status: 'decommissioned', capacityKw: 80, timezone: 'UTC', telemetryIntervalSeconds: 60 },
  { nodeId: 's1', type: 'solar', status: 'active', capacityKw: 300, timezone: 'UTC', telemetryIntervalSeconds: 60 },
  { nodeId: 's2', type: 'solar', status: 'active', capacityKw: 120, timezone: 'Europe/Berlin', telemetryIntervalSeconds: 60 },
];
const DATA_FROM = Date.parse('2026-11-09T00:00:00Z');
const DATA_TO = Date.parse('2026-11-14T00:00:00Z');
const iso = (ms: number) => new Date(ms).toISOString();

/** Readings of one node: its own level and noise, a silence longer than its cap, fault minutes, jittered times. */
function series(n: FleetNode, seed: number): RefReading[] {
  const rand = rng(seed);
  const step = n.telemetryIntervalSeconds * 1000;
  const level = n.type === 'solar' ? n.capacityKw * 0.3 : n.capacityKw * (0.1 + 0.1 * seed);
  const gapStart = DATA_FROM + (30 + 7 * seed) * 3_600_000;
  const gapEnd = gapStart + (2 + seed) * 3_600_000;
  const out: RefReading[] = [];
  for (let t = DATA_FROM; t < DATA_TO; t += step) {
    if (t >= gapStart && t < gapEnd) continue;
    if (rand() < 0.02) continue; // dropped readings: completeness below 100
    const ts = t + (rand() < 0.1 ? Math.floor(rand() * 20) * 1000 : 0);
    const swing = n.type === 'battery' ? Math.sin(ts / 5_400_000) : Math.max(0, Math.sin(((ts / 3_600_000) % 24) / 24 * 2 * Math.PI));
    const powerKw = Math.round((level * swing + (rand() - 0.5) * 5) * 100) / 100;
    out.push({ ts, powerKw, healthStatus: rand() < 0.03 ? 'fault' : 'ok' });
  }
  return out;
}

function quantile(sorted: number[], p: number): number {
  const h = (sorted.length - 1) * p;
  const lo = Math.floor(h);
  return sorted[lo] + (h - lo) * (sorted[Math.min(lo + 1, sorted.length - 1)] - sorted[lo]);
}

describe('analytics: benchmarks and portfolio', () => {
  for (const backend of backends()) {
    describe(`backend ${backend}`, () => {
      let t: TestApp;
      const data = new Map<string, RefReading[]>();
      const txs = new Map<string, RefTx[]>();
      const get = (url: string, key: string | null = KEYS.read) => t.request({ method: 'GET', url, key });

      const postReadings = async (nodeId: string, rs: RefReading[]) => {
        for (let i = 0; i < rs.length; i += 5000) {
          const readings = rs.slice(i, i + 5000).map((r) => ({ nodeId, timestamp: iso(r.ts), powerKw: r.powerKw, healthStatus: r.healthStatus }));
          const res = await t.request({ method: 'POST', url: '/api/telemetry/batch', payload: { readings }, key: KEYS.telemetry });
          assert.equal(res.statusCode, 200, res.body);
          assert.equal(res.json().rejected.length, 0, res.body);
        }
        const mine = data.get(nodeId) ?? [];
        for (const r of rs) {
          const i = mine.findIndex((x) => x.ts === r.ts);
          if (i >= 0) mine[i] = r;
          else mine.push(r);
        }
        data.set(nodeId, mine);
      };
      const postTx = async (nodeId: string, body: Record<string, unknown>): Promise<RefTx> => {
        const res = await t.request({ method: 'POST', url: '/api/transactions', payload: { nodeId, ...body }, key: KEYS.transactions });
        assert.equal(res.statusCode, 201, res.body);
        const r = res.json();
        const rec: RefTx = { id: r.id, sequence: r.sequence, type: r.type, status: r.status, timestamp: r.timestamp, amountEur: r.amountEur, relatesTo: r.relatesTo };
        txs.set(nodeId, [...(txs.get(nodeId) ?? []), rec]);
        return rec;
      };

      /** Reference figures of a node over [from, to). */
      const refNode = (n: FleetNode, from: number, to: number) => {
        const f = refFigures(data.get(n.nodeId) ?? [], from, to, 3 * n.telemetryIntervalSeconds);
        const secs = (to - from) / 1000;
        // Chains attributed by root time: UTC dates are enough here because every root lies well inside [from, to).
        let revenue = 0;
        let cost = 0;
        let dispatches = 0;
        for (const [date, m] of refMoney(txs.get(n.nodeId) ?? [], 'UTC')) {
          const d = Date.parse(`${date}T00:00:00Z`);
          if (d >= Math.floor(from / 86_400_000) * 86_400_000 && d < to) {
            revenue += m.revenue;
            cost += m.cost;
            dispatches += m.dispatches;
          }
        }
        return {
          f,
          capacityFactor: f.exportedKwh / (n.capacityKw * (secs / 3600)),
          availabilityPct: (100 * f.availableS) / secs,
          completenessPct: Math.min(100, (100 * f.count) / (secs / n.telemetryIntervalSeconds)),
          revenue,
          cost,
          dispatches,
        };
      };

      before(async () => {
        t = await createTestApp({ backend, env: { RETENTION_TELEMETRY_DAYS: '3650', RETENTION_ROLLUP_DAYS: '3650' } });
        for (const n of FLEET) {
          const r = await t.request({ method: 'POST', url: '/api/metadata', payload: { ...n, name: n.nodeId }, key: KEYS.metadata });
          assert.equal(r.statusCode, 201, r.body);
        }
        for (const [i, n] of FLEET.entries()) await postReadings(n.nodeId, series(n, i + 1));
        // Settlements at midday UTC (inside every zone's same local date), one corrected, one rejected.
        for (const [i, n] of FLEET.entries()) {
          await postTx(n.nodeId, { type: 'settlement', timestamp: '2026-11-10T12:00:00Z', amountEur: 10 * (i + 1), status: 'settled' });
          await postTx(n.nodeId, { type: 'settlement', timestamp: '2026-11-11T12:00:00Z', amountEur: -3 * (i + 1), status: 'settled' });
          await postTx(n.nodeId, { type: 'dispatch', timestamp: '2026-11-11T11:00:00Z', powerKw: 10, status: 'confirmed' });
        }
        const s = await postTx('b2', { type: 'settlement', timestamp: '2026-11-12T12:00:00Z', amountEur: 500, status: 'confirmed' });
        await postTx('b2', { type: 'adjustment', timestamp: '2026-11-20T12:00:00Z', amountEur: 450, status: 'settled', relatesTo: s.id });
        await postTx('b4', { type: 'settlement', timestamp: '2026-11-12T12:00:00Z', amountEur: 900, status: 'rejected' });
      });
      after(async () => t?.close());

      test('energyForNodes equals energyByPeriods node by node, clean and dirty', async () => {
        const check = async () => {
          const items = FLEET.map((n) => ({ nodeId: n.nodeId, telemetryIntervalSeconds: n.telemetryIntervalSeconds, periods: localDays(n.timezone, '2026-11-09', '2026-11-13') }));
          const many = await energyForNodes(t.container.db.pool, items);
          for (const [i, it] of items.entries()) {
            const one = await energyByPeriods(t.container.db.pool, it, it.periods);
            one.periods.forEach((p, j) => {
              const m = many[i][j];
              const what = `${it.nodeId} ${p.label}`;
              close(m.energyExportedKwh, p.energyExportedKwh, `${what} exported`);
              close(m.energyImportedKwh, p.energyImportedKwh, `${what} imported`);
              close(m.heldSeconds, p.heldSeconds, `${what} held`);
              close(m.availableSeconds, p.availableSeconds, `${what} available`);
              assert.equal(m.readingCount, p.readingCount, what);
              assert.equal(m.maxPowerKw, p.maxPowerKw, what);
              assert.equal(m.minPowerKw, p.minPowerKw, what);
              const f = refFigures(data.get(it.nodeId) ?? [], p.start, p.end, 3 * it.telemetryIntervalSeconds);
              close(m.energyExportedKwh, f.exportedKwh, `${what} exported vs reference`);
              close(m.availableSeconds, f.availableS, `${what} available vs reference`);
            });
          }
        };
        await check(); // whatever the refresher has done so far
        await t.container.jobs.runNow('rollup-refresh');
        await check(); // clean rollups
        await postReadings('b1', [{ ts: Date.parse('2026-11-11T10:00:30Z'), powerKw: 77, healthStatus: 'ok' }]);
        await postReadings('s2', [{ ts: Date.parse('2026-11-10T00:00:00Z'), powerKw: -5, healthStatus: 'offline' }]);
        await check(); // dirty marks: raw for those buckets
      });

      test('benchmarks: the node beside its peer group (same type, not decommissioned)', async () => {
        const r = await get('/api/analytics/b3/benchmarks?from=2026-11-10&to=2026-11-12');
        assert.equal(r.statusCode, 200, r.body);
        const body = r.json();
        const peers = FLEET.filter((n) => n.type === 'battery' && n.status !== 'decommissioned');
        assert.equal(body.peerCount, peers.length);
        const metrics = peers.map((n) => {
          const from = localMidnight('2026-11-10', n.timezone);
          const to = localMidnight('2026-11-13', n.timezone);
          const x = refNode(n, from, to);
          return { nodeId: n.nodeId, capacityFactor: x.capacityFactor, availabilityPct: x.availabilityPct, completenessPct: x.completenessPct, revenuePerKw: x.revenue / n.capacityKw };
        });
        const self = metrics.find((m) => m.nodeId === 'b3')!;
        for (const k of ['capacityFactor', 'availabilityPct', 'completenessPct', 'revenuePerKw'] as const) {
          const values = metrics.map((m) => m[k]).sort((a, b) => a - b);
          close(body[k].value, self[k], `${k} value`);
          close(body[k].p25, quantile(values, 0.25), `${k} p25`);
          close(body[k].median, quantile(values, 0.5), `${k} median`);
          close(body[k].p75, quantile(values, 0.75), `${k} p75`);
          const below = values.filter((v) => v < self[k]).length;
          const equal = values.filter((v) => v === self[k]).length;
          close(body[k].percentileRank, (100 * (below + equal / 2)) / values.length, `${k} rank`);
        }
        // b2's corrected settlement counts its adjustment's 450, b4's rejected one nothing.
        const b2 = metrics.find((m) => m.nodeId === 'b2')!;
        close(b2.revenuePerKw, (20 + 450) / 100, 'b2 revenue per kW (reference)');
        // With tz, every peer is measured over the same dates in that zone.
        const inZone = await get('/api/analytics/b3/benchmarks?from=2026-11-10&to=2026-11-12&tz=America/New_York');
        assert.equal(inZone.statusCode, 200, inZone.body);
        const zoned = peers.map((n) => {
          const x = refNode(n, localMidnight('2026-11-10', 'America/New_York'), localMidnight('2026-11-13', 'America/New_York'));
          return { nodeId: n.nodeId, capacityFactor: x.capacityFactor, completenessPct: x.completenessPct };
        });
        const zonedSelf = zoned.find((m) => m.nodeId === 'b3')!;
        for (const k of ['capacityFactor', 'completenessPct'] as const) {
          const values = zoned.map((m) => m[k]).sort((a, b) => a - b);
          close(inZone.json()[k].value, zonedSelf[k], `${k} value in tz`);
          close(inZone.json()[k].median, quantile(values, 0.5), `${k} median in tz`);
        }
        assert.equal((await get('/api/analytics/b3/benchmarks?from=2026-11-10&to=2026-11-12&tz=Mars/Base')).statusCode, 400);
        // A decommissioned node may still be benchmarked against the live peers.
        const old = await get('/api/analytics/b-old/benchmarks?from=2026-11-10&to=2026-11-12');
        assert.equal(old.statusCode, 200, old.body);
        assert.equal(old.json().peerCount, peers.length + 1);
      });

      test('portfolio: totals and per type over [from, to) instants, on and off the rollup grid', async () => {
        for (const [from, to] of [
          ['2026-11-10', '2026-11-13'],
          ['2026-11-10T06:07:13Z', '2026-11-12T18:00:00.500Z'],
        ]) {
          const r = await get(`/api/analytics/portfolio?from=${from}&to=${to}`);
          assert.equal(r.statusCode, 200, r.body);
          const body = r.json();
          const a = Date.parse(from.length === 10 ? `${from}T00:00:00Z` : from);
          const b = Date.parse(to.length === 10 ? `${to}T00:00:00Z` : to);
          assert.equal(body.from, iso(a));
          assert.equal(body.to, iso(b));
          const live = FLEET.filter((n) => n.status !== 'decommissioned');
          const hours = (b - a) / 3_600_000;
          const expect = (nodes: FleetNode[]) => {
            const xs = nodes.map((n) => ({ n, x: refNode(n, a, b) }));
            const cap = nodes.reduce((s, n) => s + n.capacityKw, 0);
            const exported = xs.reduce((s, { x }) => s + x.f.exportedKwh, 0);
            return {
              nodes: nodes.length,
              capacityKw: cap,
              energyExportedKwh: exported,
              energyImportedKwh: xs.reduce((s, { x }) => s + x.f.importedKwh, 0),
              revenueEur: xs.reduce((s, { x }) => s + x.revenue, 0),
              costEur: xs.reduce((s, { x }) => s + x.cost, 0),
              dispatchCount: xs.reduce((s, { x }) => s + x.dispatches, 0),
              avgCapacityFactor: xs.reduce((s, { x }) => s + x.capacityFactor, 0) / nodes.length,
              fleetCapacityFactor: exported / (cap * hours),
              avgAvailabilityPct: xs.reduce((s, { x }) => s + x.availabilityPct, 0) / nodes.length,
              avgCompletenessPct: xs.reduce((s, { x }) => s + x.completenessPct, 0) / nodes.length,
            };
          };
          const compare = (got: Record<string, number>, want: Record<string, number>, what: string) => {
            for (const [k, v] of Object.entries(want)) close(got[k], v, `${what} ${k}`);
          };
          compare(body.totals, expect(live), `${from} totals`);
          assert.deepEqual(body.byType.map((x: { type: string }) => x.type), ['battery', 'solar']);
          for (const bt of body.byType) compare(bt, expect(live.filter((n) => n.type === bt.type)), `${from} ${bt.type}`);
        }
      });

      test('portfolio and benchmarks caches follow new settlements and late telemetry', async () => {
        const url = '/api/analytics/portfolio?from=2026-11-10&to=2026-11-13';
        const first = (await get(url)).json();
        assert.deepEqual((await get(url)).json(), first);
        await postTx('s1', { type: 'settlement', timestamp: '2026-11-11T15:00:00Z', amountEur: 61, status: 'settled' });
        const afterTx = (await get(url)).json();
        close(afterTx.totals.revenueEur, first.totals.revenueEur + 61, 'revenue after a settlement');
        await postReadings('b1', [{ ts: Date.parse('2026-11-10T20:00:10Z'), powerKw: 40, healthStatus: 'ok' }]);
        const afterLate = (await get(url)).json();
        assert.equal(afterLate.totals.dispatchCount, first.totals.dispatchCount);
        const bench = async () => (await get('/api/analytics/b1/benchmarks?from=2026-11-10&to=2026-11-12')).json();
        const b1 = await bench();
        const gap = (DATA_FROM + 37 * 3_600_000) + 30 * 60_000; // inside b1's silence
        await postReadings('b1', [{ ts: gap, powerKw: 50, healthStatus: 'ok' }]);
        const b1After = await bench();
        assert.ok(b1After.capacityFactor.value > b1.capacityFactor.value, 'the late reading raised b1\'s capacity factor');
        assert.notDeepEqual((await get(url)).json().totals, afterLate.totals);
      });

      test('bad inputs get the error envelope with 4xx, never 500', async () => {
        const cases: [string, number][] = [
          ['/api/analytics/portfolio?from=yesterday&to=2026-11-13', 400],
          ['/api/analytics/portfolio?from=2026-11-13&to=2026-11-13', 400],
          ['/api/analytics/portfolio?from=2026-11-14&to=2026-11-13', 400],
          ['/api/analytics/portfolio?from=2025-01-01&to=2026-11-13', 400],
          ['/api/analytics/portfolio?from=2026-11-10', 400],
          ['/api/analytics/portfolio?from=2026-11-10&to=2026-11-13&type=solar', 400],
          ['/api/analytics/portfolio?from=2026-02-30&to=2026-03-13', 400],
          ['/api/analytics/b1/benchmarks?from=2026-11-10T00:00:00Z&to=2026-11-12', 400],
          ['/api/analytics/b1/benchmarks?from=2026-11-12&to=2026-11-10', 400],
          ['/api/analytics/b1/benchmarks?from=2024-11-12&to=2026-11-10', 400],
          ['/api/analytics/nobody/benchmarks?from=2026-11-10&to=2026-11-12', 404],
        ];
        for (const [url, status] of cases) {
          const r = await get(url);
          assert.equal(r.statusCode, status, `${url}: ${r.body}`);
          const e = r.json().error;
          assert.equal(typeof e.code, 'string', url);
          assert.ok(Array.isArray(e.details), url);
        }
        assert.equal((await get('/api/analytics/portfolio?from=2026-11-10&to=2026-11-13', null)).statusCode, 401);
      });
    });
  }
});
