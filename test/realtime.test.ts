import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { backends, createTestApp, KEYS, type TestApp } from './support/app.js';
import type { RealtimeDomain } from '../src/realtime/index.js';
import type { Portfolio } from '../src/realtime/portfolio.js';
import { insertNodes, setLatest, sleep, type FleetNode } from './realtime-support.js';

/** The realtime domain of a test app (the container lists domains, not names). */
export function realtimeOf(t: TestApp): RealtimeDomain {
  const d = t.container.domains.find((x) => 'hub' in x && 'portfolio' in x);
  assert.ok(d, 'realtime domain registered in the container');
  return d as RealtimeDomain;
}

const MIN = 60_000;

/** A fleet covering every state boundary at `T` (see the hand-computed totals below). */
function fleet(T: number): FleetNode[] {
  const n = (nodeId: string, type: string, status: string, capacityKw: number, storageCapacityKwh: number | null, interval: number, latest?: FleetNode['latest']): FleetNode => ({
    nodeId,
    type,
    status,
    capacityKw,
    storageCapacityKwh,
    telemetryIntervalSeconds: interval,
    latest,
  });
  return [
    n('sol-1', 'solar', 'active', 1.04, null, 60, { tsMs: T - MIN, powerKw: 0.7, healthStatus: 'ok' }),
    // Exactly 3 intervals old: still fresh. One millisecond more: stale.
    n('sol-2', 'solar', 'active', 5, null, 60, { tsMs: T - 3 * MIN, powerKw: 3.2, healthStatus: 'warning' }),
    n('sol-3', 'solar', 'active', 5, null, 60, { tsMs: T - 3 * MIN - 1, powerKw: 4, healthStatus: 'ok' }),
    n('sol-4', 'solar', 'active', 5, null, 60, { tsMs: T + MIN, powerKw: 1.5 }),
    n('bat-1', 'battery', 'active', 1000, 2000, 60, { tsMs: T - 10_000, powerKw: -300, stateOfChargePct: 50, healthStatus: 'ok' }),
    n('bat-2', 'battery', 'active', 500, 1000, 60, { tsMs: T - 10_000, powerKw: 200, stateOfChargePct: 100 }),
    n('bat-3', 'battery', 'maintenance', 500, 1000, 60, { tsMs: T - 10_000, powerKw: 0, stateOfChargePct: 20 }),
    n('bat-4', 'battery', 'active', 400, 800, 60, { tsMs: T - 10 * MIN, powerKw: 100, stateOfChargePct: 10 }),
    n('bat-5', 'battery', 'active', 100, 200, 60, { tsMs: T - 1000, powerKw: 0, stateOfChargePct: 0 }),
    n('dc-1', 'data_center', 'active', 2500, null, 300, { tsMs: T - 800_000, powerKw: -1200, healthStatus: 'ok' }),
    n('ev-1', 'ev_charging', 'active', 150, null, 60, { tsMs: T - 5000, powerKw: -50, healthStatus: 'fault' }),
    n('chp-1', 'chp', 'active', 400, null, 60, { tsMs: T - 5000, powerKw: 250, healthStatus: 'offline' }),
    n('wind-1', 'wind', 'active', 2000, null, 60),
    n('wind-2', 'wind', 'active', 2000, null, 60, { tsMs: T - 60 * MIN, powerKw: 900, healthStatus: 'offline' }),
    n('hyd-1', 'hydro', 'active', 800, null, 10, { tsMs: T - 25_000, powerKw: 500 }),
    n('old-1', 'solar', 'decommissioned', 50, null, 60, { tsMs: T - 1000, powerKw: 99 }),
    n('oth-1', 'other', 'active', 100, null, 60, { tsMs: T - 1000, powerKw: 40 }),
    n('dr-1', 'demand_response', 'inactive', 300, null, 60, { tsMs: T - 1000, powerKw: -100 }),
  ];
}

interface RefFigures {
  nodes: number;
  online: number;
  stale: number;
  offline: number;
  fault: number;
  capacityKw: number;
  currentOutputKw: number;
  generationKw: number;
  consumptionKw: number;
  storedEnergyKwh: number;
  storageCapacityKwh: number;
  headroomUpKw: number;
  headroomDownKw: number;
}

/**
 * Reference written from docs/realtime.md, node by node: state, then what the node adds.
 * Headroom per type as documented: battery ±capacity (no charging at 100 % SoC, no
 * discharging at 0 %), CHP/hydro 0..capacity, solar/wind only curtailable, loads −capacity..0.
 */
function reference(nodes: FleetNode[], asOf: number): { total: RefFigures; byType: Record<string, RefFigures> } {
  const zero = (): RefFigures => ({ nodes: 0, online: 0, stale: 0, offline: 0, fault: 0, capacityKw: 0, currentOutputKw: 0, generationKw: 0, consumptionKw: 0, storedEnergyKwh: 0, storageCapacityKwh: 0, headroomUpKw: 0, headroomDownKw: 0 });
  const total = zero();
  const byType: Record<string, RefFigures> = {};
  for (const node of nodes) {
    if (node.status === 'decommissioned') continue;
    const l = node.latest;
    const ageMs = l ? asOf - l.tsMs : Infinity;
    const fresh = ageMs <= node.telemetryIntervalSeconds * 3000;
    let state: 'online' | 'stale' | 'offline' | 'fault';
    if (!l || l.healthStatus === 'offline') state = 'offline';
    else if (!fresh) state = 'stale';
    else if (l.healthStatus === 'fault') state = 'fault';
    else state = 'online';
    let up = 0;
    let down = 0;
    if (l && state === 'online' && node.status === 'active') {
      const p = l.powerKw;
      const cap = node.capacityKw;
      switch (node.type) {
        case 'battery': {
          const soc = l.stateOfChargePct;
          const maxOut = soc === 0 ? 0 : cap;
          const maxIn = soc === 100 ? 0 : cap;
          up = Math.max(0, maxOut - p);
          down = Math.max(0, p + maxIn);
          break;
        }
        case 'chp':
        case 'hydro':
          up = Math.max(0, cap - p);
          down = Math.max(0, p);
          break;
        case 'solar':
        case 'wind':
          down = Math.max(0, p);
          break;
        case 'data_center':
        case 'ev_charging':
        case 'demand_response':
          up = Math.max(0, -p);
          down = Math.max(0, cap + p);
          break;
        default:
          break;
      }
    }
    for (const f of [total, (byType[node.type] ??= zero())]) {
      f.nodes++;
      f[state]++;
      f.capacityKw += node.capacityKw;
      if (l && fresh) {
        f.currentOutputKw += l.powerKw;
        f.generationKw += Math.max(0, l.powerKw);
        f.consumptionKw += Math.max(0, -l.powerKw);
        if (l.stateOfChargePct !== undefined && node.storageCapacityKwh !== null) {
          f.storedEnergyKwh += (l.stateOfChargePct * node.storageCapacityKwh) / 100;
          f.storageCapacityKwh += node.storageCapacityKwh;
        }
      }
      f.headroomUpKw += up;
      f.headroomDownKw += down;
    }
  }
  return { total, byType };
}

function assertFigures(actual: Record<string, unknown>, expected: RefFigures, where: string): void {
  for (const [k, v] of Object.entries(expected)) {
    const a = actual[k];
    assert.equal(typeof a, 'number', `${where}.${k} is a number`);
    assert.ok(Math.abs((a as number) - v) < 1e-6, `${where}.${k}: got ${String(a)}, expected ${v}`);
  }
}

function assertMatchesReference(p: Portfolio, nodes: FleetNode[]): void {
  const asOf = Date.parse(p.asOf);
  const ref = reference(nodes, asOf);
  assertFigures(p as unknown as Record<string, unknown>, ref.total, 'total');
  assert.deepEqual(
    p.byType.map((t) => t.type),
    Object.keys(ref.byType).sort(),
  );
  for (const t of p.byType) assertFigures(t as unknown as Record<string, unknown>, ref.byType[t.type], t.type);
}

for (const backend of backends()) {
  describe(`realtime portfolio (${backend})`, () => {
    let t: TestApp;
    let T: number;
    let nodes: FleetNode[];
    before(async () => {
      t = await createTestApp({ backend });
      T = Date.now();
      nodes = fleet(T);
      await insertNodes(t.container.db.pool, nodes);
      await t.container.nodes.reloadAll();
    });
    after(async () => t?.close());

    test('figures at a fixed instant: hand-computed totals, boundaries and the reference', async () => {
      const p = await realtimeOf(t).portfolio.compute(T);
      assert.equal(p.asOf, new Date(T).toISOString());
      // By hand (see fleet): 17 nodes (old-1 decommissioned is left out).
      assert.deepEqual([p.nodes, p.online, p.stale, p.offline, p.fault], [17, 11, 2, 3, 1]);
      assert.ok(Math.abs(p.currentOutputKw - -654.6) < 1e-9, String(p.currentOutputKw));
      assert.ok(Math.abs(p.generationKw - 995.4) < 1e-9);
      assert.equal(p.consumptionKw, 1650);
      assert.equal(p.storedEnergyKwh, 2200);
      assert.equal(p.storageCapacityKwh, 4200);
      assert.equal(p.headroomUpKw, 3100);
      assert.ok(Math.abs(p.headroomDownKw - 2805.4) < 1e-9, String(p.headroomDownKw));
      const battery = p.byType.find((x) => x.type === 'battery');
      assert.ok(battery);
      assert.deepEqual([battery.nodes, battery.online, battery.stale, battery.currentOutputKw, battery.storedEnergyKwh, battery.headroomUpKw, battery.headroomDownKw], [5, 4, 1, -100, 2200, 1600, 1000]);
      const solar = p.byType.find((x) => x.type === 'solar');
      assert.ok(solar);
      // sol-2 at exactly 3 intervals is fresh and online; sol-3 one millisecond older is stale.
      assert.deepEqual([solar.nodes, solar.online, solar.stale], [4, 3, 1]);
      assertMatchesReference(p, nodes);
    });

    test('one millisecond later the boundary reading turns stale', async () => {
      const p = await realtimeOf(t).portfolio.compute(T + 1);
      const solar = p.byType.find((x) => x.type === 'solar');
      assert.deepEqual([solar?.online, solar?.stale], [2, 2]);
      assertMatchesReference(p, nodes);
    });

    test('GET /api/realtime/portfolio matches the reference at its asOf', async () => {
      const r = await t.request({ method: 'GET', url: '/api/realtime/portfolio', key: KEYS.read });
      assert.equal(r.statusCode, 200, r.body);
      const p = r.json<Portfolio>();
      assert.ok(Math.abs(Date.parse(p.asOf) - Date.now()) <= 5000);
      assertMatchesReference(p, nodes);
    });

    test('the answer is cached for at most 5 s, then reflects new readings', async () => {
      const first = (await t.request({ method: 'GET', url: '/api/realtime/portfolio' })).json<Portfolio>();
      // A change inside the cache lifetime is not visible yet ...
      const changed = { ...nodes.find((x) => x.nodeId === 'hyd-1')!, latest: { tsMs: Date.now(), powerKw: 700 } };
      await setLatest(t.container.db.pool, 'hyd-1', changed.latest);
      const second = (await t.request({ method: 'GET', url: '/api/realtime/portfolio' })).json<Portfolio>();
      assert.equal(second.asOf, first.asOf);
      assert.equal(second.currentOutputKw, first.currentOutputKw);
      // ... and is once 5 s have passed since asOf; the answer is never older than that.
      const wait = Date.parse(first.asOf) + 5000 - Date.now() + 50;
      if (wait > 0) await sleep(wait);
      const third = (await t.request({ method: 'GET', url: '/api/realtime/portfolio' })).json<Portfolio>();
      assert.notEqual(third.asOf, first.asOf);
      assert.ok(Date.now() - Date.parse(third.asOf) <= 5000);
      const updated = nodes.map((x) => (x.nodeId === 'hyd-1' ? changed : x));
      assertMatchesReference(third, updated);
      const hydro = third.byType.find((x) => x.type === 'hydro');
      assert.equal(hydro?.currentOutputKw, 700);
      nodes = updated;
    });

    test('auth: no key 401, a key without read 403, both with the envelope', async () => {
      const none = await t.request({ method: 'GET', url: '/api/realtime/portfolio', key: null });
      assert.equal(none.statusCode, 401);
      assert.equal(none.json().error.code, 'UNAUTHORIZED');
      const wrong = await t.request({ method: 'GET', url: '/api/realtime/portfolio', key: KEYS.telemetry });
      assert.equal(wrong.statusCode, 403);
      assert.ok(Array.isArray(wrong.json().error.details));
    });
  });
}

describe('realtime portfolio across instances (redis)', { skip: backends().includes('redis') ? false : 'REDIS_URL is not set' }, () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    a = await createTestApp({ backend: 'redis' });
    b = await createTestApp({ backend: 'redis', keyPrefix: a.keyPrefix, databaseUrl: a.databaseUrl });
    await insertNodes(a.container.db.pool, fleet(Date.now()));
  });
  after(async () => {
    await b?.close();
    await a?.close();
  });

  test('the cached answer is shared: B serves what A computed', async () => {
    const pa = (await a.request({ method: 'GET', url: '/api/realtime/portfolio' })).json<Portfolio>();
    const pb = (await b.request({ method: 'GET', url: '/api/realtime/portfolio' })).json<Portfolio>();
    assert.equal(pb.asOf, pa.asOf);
    assert.deepEqual(pb, pa);
  });
});
