import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rng as prng } from './support/rng.js';
import pg from 'pg';
import { backends, createTestApp, type TestApp } from './support/app.js';
import { boundingBox } from '../src/metadata/geo.js';
import { nearbyStatement } from '../src/metadata/store.js';

const TYPES = ['solar', 'wind', 'battery', 'data_center', 'ev_charging', 'chp', 'hydro', 'demand_response', 'other'] as const;
const STATUSES = ['active', 'inactive', 'maintenance', 'decommissioned'] as const;
const JSON_HEADERS = { 'content-type': 'application/json' };

interface Seed {
  nodeId: string;
  type: string;
  status: string;
  lat?: number;
  lon?: number;
}


/**
 * Reference great-circle distance, computed differently from the service (chord length between
 * unit vectors rather than haversine); same mean Earth radius, 6371.0088 km, as docs/metadata.md states.
 */
function referenceKm(lat1: number, lon1: number, lat2: number, lon2: number): number {
  const v = (lat: number, lon: number) => {
    const p = (lat * Math.PI) / 180;
    const l = (lon * Math.PI) / 180;
    return [Math.cos(p) * Math.cos(l), Math.cos(p) * Math.sin(l), Math.sin(p)];
  };
  const a = v(lat1, lon1);
  const b = v(lat2, lon2);
  const chord = Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  return 2 * 6371.0088 * Math.asin(Math.min(1, chord / 2));
}

/** Bytewise comparison, the order the service documents for node lists. */
function bytewise(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function makeFleet(): Seed[] {
  const rnd = prng(42);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)];
  const fleet: Seed[] = [];
  const add = (prefix: string, n: number, where: () => [number, number] | undefined) => {
    for (let i = 0; i < n; i++) {
      const loc = where();
      fleet.push({ nodeId: `${prefix}-${String(i).padStart(3, '0')}`, type: pick(TYPES), status: pick(STATUSES), lat: loc?.[0], lon: loc?.[1] });
    }
  };
  add('glob', 80, () => [Math.asin(2 * rnd() - 1) * (180 / Math.PI), -180 + 360 * rnd()]);
  add('fra', 40, () => [50.11 + (rnd() - 0.5) * 6, 8.68 + (rnd() - 0.5) * 8]);
  // Fiji straddles the antimeridian.
  add('fiji', 40, () => [-17 + (rnd() - 0.5) * 8, ((179 + rnd() * 4 + 180) % 360) - 180]);
  add('north', 20, () => [86 + rnd() * 4, -180 + 360 * rnd()]);
  add('south', 20, () => [-90 + rnd() * 3, -180 + 360 * rnd()]);
  add('noloc', 10, () => undefined);
  // Mixed-case ids to pin the bytewise order ("B" < "a").
  add('Bx', 5, () => [10, 10]);
  add('aX', 5, () => [10, 10]);
  return fleet;
}

function body(s: Seed): Record<string, unknown> {
  return {
    nodeId: s.nodeId,
    name: `node ${s.nodeId}`,
    type: s.type,
    status: s.status,
    capacityKw: 100,
    ...(s.lat !== undefined ? { location: { lat: s.lat, lon: s.lon } } : {}),
  };
}

for (const backend of backends()) {
  describe(`node queries (${backend})`, () => {
    let t: TestApp;
    const fleet = makeFleet();
    before(async () => {
      t = await createTestApp({ backend });
      for (let i = 0; i < fleet.length; i += 20) {
        const rs = await Promise.all(
          fleet.slice(i, i + 20).map((s) => t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify(body(s)) })),
        );
        for (const r of rs) assert.equal(r.statusCode, 201, r.body);
      }
    });
    after(async () => t?.close());

    async function collect(url: string, limit: number): Promise<{ ids: string[]; pages: number }> {
      const ids: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const sep = url.includes('?') ? '&' : '?';
        const r = await t.request({ method: 'GET', url: `${url}${sep}limit=${limit}${cursor ? `&cursor=${cursor}` : ''}` });
        assert.equal(r.statusCode, 200, r.body);
        const b = r.json();
        assert.ok(b.items.length <= limit);
        ids.push(...b.items.map((n: { nodeId: string }) => n.nodeId));
        cursor = b.nextCursor;
        pages++;
        assert.ok(pages < 1000, 'pagination terminates');
      } while (cursor);
      return { ids, pages };
    }

    test('active nodes: every active node once, in bytewise nodeId order, across pages', async () => {
      const expected = fleet.filter((s) => s.status === 'active').map((s) => s.nodeId).sort(bytewise);
      assert.ok(expected.length > 20);
      const { ids, pages } = await collect('/api/nodes/active', 7);
      assert.deepEqual(ids, expected);
      assert.equal(pages, Math.ceil(expected.length / 7) + (expected.length % 7 === 0 ? 1 : 0));
      const oneShot = await t.request({ method: 'GET', url: '/api/nodes/active?limit=1000' });
      assert.deepEqual(oneShot.json().items.map((n: { nodeId: string }) => n.nodeId), expected);
      assert.equal(oneShot.json().nextCursor, null);
      const first = oneShot.json().items[0];
      assert.equal(first.status, 'active');
      assert.equal(first.version, 1);
      assert.equal(first.capacityKw, 100);
    });

    test('active nodes filtered by type', async () => {
      for (const type of ['battery', 'wind']) {
        const expected = fleet.filter((s) => s.status === 'active' && s.type === type).map((s) => s.nodeId).sort(bytewise);
        const { ids } = await collect(`/api/nodes/active?type=${type}`, 3);
        assert.deepEqual(ids, expected, type);
      }
    });

    test('by type, with and without status', async () => {
      for (const type of TYPES) {
        const expected = fleet.filter((s) => s.type === type).map((s) => s.nodeId).sort(bytewise);
        assert.deepEqual((await collect(`/api/nodes/by-type/${type}`, 5)).ids, expected, type);
      }
      const expected = fleet.filter((s) => s.type === 'solar' && s.status === 'maintenance').map((s) => s.nodeId).sort(bytewise);
      assert.deepEqual((await collect('/api/nodes/by-type/solar?status=maintenance', 2)).ids, expected);
    });

    test('pagination is complete and duplicate-free while nodes are inserted between pages', async () => {
      const initial = new Set(fleet.filter((s) => s.type === 'hydro').map((s) => s.nodeId));
      const seen: string[] = [];
      let cursor: string | null = null;
      let round = 0;
      const inserted: string[] = [];
      do {
        const r = await t.request({ method: 'GET', url: `/api/nodes/by-type/hydro?limit=4${cursor ? `&cursor=${cursor}` : ''}` });
        assert.equal(r.statusCode, 200, r.body);
        seen.push(...r.json().items.map((n: { nodeId: string }) => n.nodeId));
        cursor = r.json().nextCursor;
        // Between the first pages, insert nodes that sort before everything, in the middle, and after everything.
        for (const id of round < 3 ? [`0-ins-${round}`, `glob-050-ins-${round}`, `zzz-ins-${round}`] : []) {
          const p = await t.request({ method: 'POST', url: '/api/metadata', headers: JSON_HEADERS, payload: JSON.stringify(body({ nodeId: id, type: 'hydro', status: 'active' })) });
          assert.equal(p.statusCode, 201, p.body);
          inserted.push(id);
        }
        round++;
      } while (cursor && round < 100);
      assert.equal(cursor, null, 'pagination ends');
      assert.equal(new Set(seen).size, seen.length, 'no node served twice');
      for (const id of initial) assert.ok(seen.includes(id), `${id} was served`);
      for (let i = 1; i < seen.length; i++) assert.ok(bytewise(seen[i - 1], seen[i]) < 0, 'strictly increasing');
      assert.ok(seen.some((id) => id.startsWith('zzz-ins-')), 'nodes inserted after the cursor appear');
      for (const id of seen) assert.ok(initial.has(id) || inserted.includes(id));
    });

    const badQueries: [string, string][] = [
      ['/api/nodes/by-type/nuclear', 'unknown type'],
      ['/api/nodes/by-type/solar?status=on', 'unknown status'],
      ['/api/nodes/active?type=nuclear', 'unknown type filter'],
      ['/api/nodes/active?limit=1001', 'limit above 1000'],
      ['/api/nodes/active?limit=0', 'limit 0'],
      ['/api/nodes/active?limit=ten', 'limit not a number'],
      ['/api/nodes/active?limit=2.5', 'fractional limit'],
      ['/api/nodes/active?cursor=%%%', 'cursor garbage'],
      ['/api/nodes/active?cursor=bm90LWpzb24', 'cursor not JSON'],
      [`/api/nodes/active?cursor=${Buffer.from(JSON.stringify([1.5, 'x'])).toString('base64url')}`, 'cursor of another list'],
      [`/api/nodes/active?cursor=${Buffer.from(JSON.stringify([7])).toString('base64url')}`, 'cursor with a number key'],
      ['/api/nodes/active?colour=red', 'an unknown query parameter'],
      ['/api/nodes/nearby?lon=8&radiusKm=10', 'nearby without lat'],
      ['/api/nodes/nearby?lat=50&radiusKm=10', 'nearby without lon'],
      ['/api/nodes/nearby?lat=50&lon=8', 'nearby without radiusKm'],
      ['/api/nodes/nearby?lat=90.5&lon=8&radiusKm=10', 'lat above 90'],
      ['/api/nodes/nearby?lat=-91&lon=8&radiusKm=10', 'lat below -90'],
      ['/api/nodes/nearby?lat=50&lon=180.01&radiusKm=10', 'lon above 180'],
      ['/api/nodes/nearby?lat=50&lon=-181&radiusKm=10', 'lon below -180'],
      ['/api/nodes/nearby?lat=abc&lon=8&radiusKm=10', 'lat not a number'],
      ['/api/nodes/nearby?lat=&lon=8&radiusKm=10', 'lat empty'],
      ['/api/nodes/nearby?lat=Infinity&lon=8&radiusKm=10', 'lat infinite'],
      ['/api/nodes/nearby?lat=0x10&lon=8&radiusKm=10', 'lat in hex'],
      ['/api/nodes/nearby?lat=0b1&lon=8&radiusKm=10', 'lat in binary'],
      ['/api/nodes/nearby?lat=50&lon=0o7&radiusKm=10', 'lon in octal'],
      ['/api/nodes/nearby?lat=%2050&lon=8&radiusKm=10', 'lat with a leading space'],
      ['/api/nodes/nearby?lat=50&lon=8&radiusKm=0x4E20', 'radius in hex'],
      ['/api/nodes/active?limit=0x10', 'limit in hex'],
      ['/api/nodes/nearby?lat=50&lon=8&radiusKm=20000.5', 'radius above 20000'],
      ['/api/nodes/nearby?lat=50&lon=8&radiusKm=-1', 'negative radius'],
      ['/api/nodes/nearby?lat=50&lon=8&radiusKm=10&type=coal', 'unknown type'],
      ['/api/nodes/nearby?lat=50&lon=8&radiusKm=10&limit=1001', 'limit above 1000'],
      [`/api/nodes/nearby?lat=50&lon=8&radiusKm=10&cursor=${Buffer.from(JSON.stringify(['glob-001'])).toString('base64url')}`, 'cursor of another list'],
      [`/api/nodes/nearby?lat=50&lon=8&radiusKm=10&cursor=${Buffer.from(JSON.stringify(['x', 1])).toString('base64url')}`, 'cursor with swapped keys'],
    ];
    for (const [url, what] of badQueries) {
      test(`400 for ${what}`, async () => {
        const r = await t.request({ method: 'GET', url });
        assert.equal(r.statusCode, 400, `${url}: ${r.body}`);
        const e = r.json().error;
        assert.equal(typeof e.code, 'string');
        assert.equal(typeof e.message, 'string');
        assert.ok(Array.isArray(e.details) && e.details.length > 0, JSON.stringify(e));
      });
    }

    const located = fleet.filter((s) => s.lat !== undefined) as Required<Seed>[];
    const centers: [string, number, number, number, string?][] = [
      ['Frankfurt, 300 km', 50.11, 8.68, 300],
      ['Frankfurt, 300 km, batteries only', 50.11, 8.68, 300, 'battery'],
      ['east of the date line, 600 km', -17, 179.9, 600],
      ['west of the date line, 600 km', -16.5, -179.8, 600],
      ['exactly on the date line', -17, 180, 400],
      ['near the north pole, 500 km', 89.7, 45, 500],
      ['the north pole itself', 90, 0, 450],
      ['near the south pole, 800 km', -89.5, -120, 800],
      ['the whole Earth', 0, 0, 20000],
      ['a radius of 0 on a node', 10, 10, 0],
      ['nothing there', 0, -30, 10],
    ];
    for (const [what, lat, lon, radiusKm, type] of centers) {
      test(`nearby matches the reference: ${what}`, async () => {
        const ref = located
          .filter((s) => type === undefined || s.type === type)
          .map((s) => ({ id: s.nodeId, d: referenceKm(lat, lon, s.lat, s.lon) }));
        // Within a micrometre of the edge, either answer is right.
        const edge = (d: number) => Math.abs(d - radiusKm) < 1e-9 * Math.max(1, radiusKm);
        const must = new Set(ref.filter((x) => x.d <= radiusKm && !edge(x.d)).map((x) => x.id));
        const may = new Set(ref.filter((x) => edge(x.d)).map((x) => x.id));
        const refDist = new Map(ref.map((x) => [x.id, x.d]));
        const r = await t.request({ method: 'GET', url: `/api/nodes/nearby?lat=${lat}&lon=${lon}&radiusKm=${radiusKm}&limit=1000${type ? `&type=${type}` : ''}` });
        assert.equal(r.statusCode, 200, r.body);
        const items = r.json().items as { nodeId: string; distanceKm: number; type: string; location: { lat: number; lon: number } }[];
        assert.equal(r.json().nextCursor, null);
        const got = new Set(items.map((i) => i.nodeId));
        for (const id of must) assert.ok(got.has(id), `${id} at ${refDist.get(id)} km is within ${radiusKm} km`);
        for (const id of got) assert.ok(must.has(id) || may.has(id), `${id} at ${refDist.get(id)} km is outside ${radiusKm} km`);
        for (let i = 0; i < items.length; i++) {
          assert.ok(Math.abs(items[i].distanceKm - refDist.get(items[i].nodeId)!) < 1e-6, `distance of ${items[i].nodeId}`);
          if (type) assert.equal(items[i].type, type);
          if (i > 0) {
            const a = items[i - 1];
            const b = items[i];
            assert.ok(a.distanceKm < b.distanceKm || (a.distanceKm === b.distanceKm && bytewise(a.nodeId, b.nodeId) < 0), 'nearest first, ties by nodeId');
          }
        }
        if (what.includes('date line')) {
          assert.ok(items.some((i) => i.location.lon > 170) && items.some((i) => i.location.lon < -170), 'both sides of the antimeridian are found');
        }
        if (what.includes('north pole')) assert.ok(new Set(items.map((i) => Math.sign(i.location.lon))).size === 2, 'all longitudes around the pole');
        if (what === 'the whole Earth') assert.equal(items.length, located.length);
        if (what.startsWith('a radius of 0')) assert.equal(items.length, 10);
        if (what === 'nothing there') assert.equal(items.length, 0);
        if (!what.startsWith('a radius') && what !== 'nothing there') assert.ok(items.length >= 3, `${what} finds something (${items.length})`);
      });
    }

    test('nearby pages with a cursor give the same sequence as one page', async () => {
      const all = await t.request({ method: 'GET', url: '/api/nodes/nearby?lat=-17&lon=180&radiusKm=1500&limit=1000' });
      const expected = all.json().items.map((n: { nodeId: string }) => n.nodeId);
      assert.ok(expected.length > 10);
      const { ids } = await collect('/api/nodes/nearby?lat=-17&lon=180&radiusKm=1500', 3);
      assert.deepEqual(ids, expected);
      const limited = await t.request({ method: 'GET', url: '/api/nodes/nearby?lat=-17&lon=180&radiusKm=1500&limit=5' });
      assert.deepEqual(limited.json().items.map((n: { nodeId: string }) => n.nodeId), expected.slice(0, 5));
      assert.notEqual(limited.json().nextCursor, null);
    });

    test("a cursor works only on the list that issued it (radiusKm may change); an empty one is 400", async () => {
      const next = async (url: string) => {
        const r = await t.request({ method: 'GET', url });
        assert.equal(r.statusCode, 200, r.body);
        const c = r.json().nextCursor as string | null;
        assert.ok(c, `${url} has a next page`);
        return c;
      };
      const active = await next('/api/nodes/active?limit=1');
      const solar = await next('/api/nodes/by-type/solar?limit=1');
      const activeSolar = await next('/api/nodes/active?type=solar&limit=1');
      const near = await next('/api/nodes/nearby?lat=-17&lon=180&radiusKm=1500&limit=2');
      const wrong: [string, string][] = [
        [`/api/nodes/by-type/other?cursor=${active}`, 'active cursor on by-type'],
        [`/api/nodes/by-type/wind?cursor=${solar}`, 'solar cursor on wind'],
        [`/api/nodes/by-type/solar?status=active&cursor=${solar}`, 'cursor without status filter on one with it'],
        [`/api/nodes/active?cursor=${activeSolar}`, 'type-filtered cursor without the filter'],
        [`/api/nodes/active?type=solar&cursor=${solar}`, 'by-type cursor on active'],
        [`/api/nodes/nearby?lat=60&lon=60&radiusKm=100&cursor=${near}`, 'nearby cursor from another point'],
        [`/api/nodes/nearby?lat=-17&lon=180&radiusKm=1500&type=solar&cursor=${near}`, 'nearby cursor with another type'],
        ['/api/nodes/active?cursor=', 'empty cursor'],
        ['/api/nodes/nearby?lat=-17&lon=180&radiusKm=1500&cursor=', 'empty nearby cursor'],
      ];
      for (const [url, what] of wrong) {
        const r = await t.request({ method: 'GET', url });
        assert.equal(r.statusCode, 400, `${what}: ${r.body}`);
        assert.equal(r.json().error.code, 'INVALID_CURSOR', what);
        assert.equal(r.json().error.details[0].path, '/cursor', what);
      }
      // The same list with another window continues where the cursor points.
      const wider = await t.request({ method: 'GET', url: `/api/nodes/nearby?lat=-17&lon=180&radiusKm=3000&limit=1000&cursor=${near}` });
      assert.equal(wider.statusCode, 200, wider.body);
      const all = (await t.request({ method: 'GET', url: '/api/nodes/nearby?lat=-17&lon=180&radiusKm=3000&limit=1000' })).json().items.map((n: { nodeId: string }) => n.nodeId);
      assert.deepEqual(wider.json().items.map((n: { nodeId: string }) => n.nodeId), all.slice(2));
      for (const [url, c] of [['/api/nodes/active', active], ['/api/nodes/by-type/solar', solar], ['/api/nodes/active?type=solar', activeSolar]]) {
        const r = await t.request({ method: 'GET', url: `${url}${url.includes('?') ? '&' : '?'}cursor=${c}` });
        assert.equal(r.statusCode, 200, `${url}: ${r.body}`);
      }
    });

    test('nearby uses the (lat, lon) index for its prefilter', async () => {
      const c = new pg.Client({ connectionString: t.databaseUrl });
      await c.connect();
      try {
        await c.query('ANALYZE nodes');
        // The table is small, so a sequential scan would be cheaper; forbid it to see that the index can serve the query.
        await c.query('SET enable_seqscan = off');
        for (const [lat, lon, r] of [[50, 8, 100], [-17, 179.9, 600], [89.9, 0, 300]] as const) {
          const { text, values } = nearbyStatement({ lat, lon, radiusKm: r, box: boundingBox(lat, lon, r), limit: 100 });
          const plan = (await c.query(`EXPLAIN ${text}`, values)).rows.map((x: Record<string, string>) => x['QUERY PLAN']).join('\n');
          assert.match(plan, /nodes_lat_lon/, plan);
        }
      } finally {
        await c.end();
      }
    });
  });
}

describe('bounding box of a circle', () => {
  test('contains every point of the circle, across the date line and around the poles', () => {
    const rnd = prng(7);
    let checked = 0;
    for (let c = 0; c < 300; c++) {
      const lat = c % 10 === 0 ? 90 - rnd() * 3 : c % 10 === 1 ? -90 + rnd() * 3 : Math.asin(2 * rnd() - 1) * (180 / Math.PI);
      const lon = c % 5 === 0 ? 175 + rnd() * 5 : -180 + 360 * rnd();
      const r = [1, 50, 500, 3000, 12000][c % 5];
      const box = boundingBox(lat, lon, r);
      const inBox = (la: number, lo: number) => la >= box.latMin && la <= box.latMax && box.lonRanges.some(([a, b]) => lo >= a && lo <= b);
      // Points on and near the circle: walk out from the centre along many bearings.
      for (let k = 0; k < 72; k++) {
        const bearing = (k * 5 * Math.PI) / 180;
        for (const f of [0.5, 0.999999]) {
          const [la, lo] = destination(lat, lon, bearing, r * f);
          assert.ok(referenceKm(lat, lon, la, lo) <= r + 1e-6);
          assert.ok(inBox(la, lo), `(${la}, ${lo}) of the circle (${lat}, ${lon}, ${r} km) is outside the box ${JSON.stringify(box)}`);
          checked++;
        }
      }
    }
    assert.ok(checked > 40_000);
  });

  test('is tight for small circles and wraps at the antimeridian', () => {
    const fra = boundingBox(50, 8, 100);
    assert.equal(fra.lonRanges.length, 1);
    assert.ok(fra.latMax - fra.latMin < 1.9 && fra.lonRanges[0][1] - fra.lonRanges[0][0] < 2.9, JSON.stringify(fra));
    const fiji = boundingBox(-17, 179.5, 200);
    assert.equal(fiji.lonRanges.length, 2);
    assert.ok(fiji.lonRanges.some(([a, b]) => a > 177.5 && a < 178 && b === 180));
    assert.ok(fiji.lonRanges.some(([a, b]) => a === -180 && b > -179 && b < -178.5));
    const pole = boundingBox(89, 0, 200);
    assert.deepEqual(pole.lonRanges, [[-180, 180]]);
    assert.equal(pole.latMax, 90);
  });
});

/** Point at `distKm` along `bearing` (radians) from (lat, lon), degrees in and out (spherical). */
function destination(lat: number, lon: number, bearing: number, distKm: number): [number, number] {
  const d = distKm / 6371.0088;
  const p1 = (lat * Math.PI) / 180;
  const l1 = (lon * Math.PI) / 180;
  const p2 = Math.asin(Math.sin(p1) * Math.cos(d) + Math.cos(p1) * Math.sin(d) * Math.cos(bearing));
  const l2 = l1 + Math.atan2(Math.sin(bearing) * Math.sin(d) * Math.cos(p1), Math.cos(d) - Math.sin(p1) * Math.sin(p2));
  const lonDeg = ((((l2 * 180) / Math.PI + 540) % 360) + 360) % 360 - 180;
  return [(p2 * 180) / Math.PI, lonDeg];
}
