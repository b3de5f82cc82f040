import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { openExportStream } from '../src/telemetry/export-stream.js';
import { createTestApp, KEYS, type TestApp } from './support/app.js';

/** A reading as the test means it: API names, nulls for what the reading does not carry. */
interface Reading {
  nodeId: string;
  ts: number;
  powerKw: number;
  reactivePowerKvar?: number | null;
  voltageV?: number | null;
  currentA?: number | null;
  frequencyHz?: number | null;
  stateOfChargePct?: number | null;
  temperatureC?: number | null;
  irradianceWm2?: number | null;
  windSpeedMs?: number | null;
  gridImportKw?: number | null;
  gridExportKw?: number | null;
  healthStatus?: string | null;
  quality?: string | null;
  extra?: unknown;
  flags?: number;
}

const NUMERIC = ['powerKw', 'reactivePowerKvar', 'voltageV', 'currentA', 'frequencyHz', 'stateOfChargePct', 'temperatureC', 'irradianceWm2', 'windSpeedMs', 'gridImportKw', 'gridExportKw'] as const;
const ALL_FIELDS = [...NUMERIC, 'healthStatus', 'quality', 'extra'] as const;
const COLUMNS: Record<string, string> = {
  powerKw: 'power_kw',
  reactivePowerKvar: 'reactive_power_kvar',
  voltageV: 'voltage_v',
  currentA: 'current_a',
  frequencyHz: 'frequency_hz',
  stateOfChargePct: 'state_of_charge_pct',
  temperatureC: 'temperature_c',
  irradianceWm2: 'irradiance_wm2',
  windSpeedMs: 'wind_speed_ms',
  gridImportKw: 'grid_import_kw',
  gridExportKw: 'grid_export_kw',
  healthStatus: 'health_status',
  quality: 'quality',
};

async function addNode(t: TestApp, nodeId: string, intervalSeconds = 60, capacityKw = 1000): Promise<void> {
  await t.container.db.pool.query(
    `INSERT INTO nodes (node_id, type, status, capacity_kw, telemetry_interval_seconds, doc) VALUES ($1, 'battery', 'active', $2, $3, $4)`,
    [nodeId, capacityKw, intervalSeconds, JSON.stringify({ nodeId })],
  );
}

async function ensurePartitions(t: TestApp, fromMs: number, toMs: number): Promise<void> {
  await t.container.db.pool.query(
    `SELECT ensure_telemetry_partition(d::date) FROM generate_series(($1::timestamptz AT TIME ZONE 'UTC')::date, ($2::timestamptz AT TIME ZONE 'UTC')::date, '1 day') d`,
    [new Date(fromMs).toISOString(), new Date(toMs).toISOString()],
  );
}

/** Stores readings with plain SQL, as ingestion would (one row per (nodeId, ts)). */
async function insertReadings(t: TestApp, readings: Reading[]): Promise<void> {
  if (!readings.length) return;
  const tss = readings.map((r) => r.ts);
  await ensurePartitions(t, Math.min(...tss), Math.max(...tss));
  const cols = ['node_id', 'ts', ...Object.values(COLUMNS), 'extra', 'flags'];
  for (let i = 0; i < readings.length; i += 500) {
    const slice = readings.slice(i, i + 500);
    const values: unknown[] = [];
    const rows = slice.map((r) => {
      const v = [r.nodeId, new Date(r.ts).toISOString(), ...Object.keys(COLUMNS).map((k) => (r as unknown as Record<string, unknown>)[k] ?? null), r.extra === undefined || r.extra === null ? null : JSON.stringify(r.extra), r.flags ?? 0];
      const base = values.length;
      values.push(...v);
      return `(${v.map((_, j) => `$${base + j + 1}`).join(',')})`;
    });
    await t.container.db.pool.query(`INSERT INTO telemetry (${cols.join(',')}) VALUES ${rows.join(',')}`, values);
  }
}

/** An RFC 4180 parser written for the test (independent of the service's writer). */
function parseCsv(text: string): string[][] {
  const out: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let i = 0;
  let quoted = false;
  let atCellStart = true;
  while (i < text.length) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        cell += '"';
        i += 2;
        continue;
      }
      if (ch === '"') {
        quoted = false;
        i++;
        continue;
      }
      cell += ch;
      i++;
      continue;
    }
    if (ch === '"' && atCellStart) {
      quoted = true;
      atCellStart = false;
      i++;
      continue;
    }
    if (ch === ',') {
      row.push(cell);
      cell = '';
      atCellStart = true;
      i++;
      continue;
    }
    if (ch === '\n' || ch === '\r') {
      row.push(cell);
      out.push(row);
      row = [];
      cell = '';
      atCellStart = true;
      i += ch === '\r' && text[i + 1] === '\n' ? 2 : 1;
      continue;
    }
    cell += ch;
    atCellStart = false;
    i++;
  }
  assert.equal(quoted, false, 'unterminated quoted cell');
  if (cell !== '' || row.length) {
    row.push(cell);
    out.push(row);
  }
  return out;
}

/** The expected export of `readings` (reference): filtered to nodes and [from, to), ordered by (nodeId, ts). */
function expectedRows(readings: Reading[], nodeIds: string[], from: number, to: number): Reading[] {
  return readings
    .filter((r) => nodeIds.includes(r.nodeId) && r.ts >= from && r.ts < to)
    .sort((a, b) => (a.nodeId === b.nodeId ? a.ts - b.ts : a.nodeId < b.nodeId ? -1 : 1));
}

/** The reading as an NDJSON line should decode: API names, absent keys for nulls. */
function apiShape(r: Reading, fields: readonly string[]): Record<string, unknown> {
  const o: Record<string, unknown> = { nodeId: r.nodeId, timestamp: new Date(r.ts).toISOString() };
  for (const f of fields) {
    const v = (r as unknown as Record<string, unknown>)[f];
    if (v !== null && v !== undefined) o[f] = v;
  }
  return o;
}

/** Checks one CSV row against a reading, decoding each cell by its field's type. */
function assertCsvRow(cells: string[], r: Reading, fields: readonly string[]): void {
  assert.equal(cells.length, fields.length + 2);
  assert.equal(cells[0], r.nodeId);
  assert.equal(cells[1], new Date(r.ts).toISOString());
  fields.forEach((f, i) => {
    const cell = cells[i + 2];
    const v = (r as unknown as Record<string, unknown>)[f];
    if (v === null || v === undefined) assert.equal(cell, '', `${f} of ${r.nodeId}@${r.ts} should be empty`);
    else if (f === 'extra') assert.deepEqual(JSON.parse(cell), v);
    else if ((NUMERIC as readonly string[]).includes(f)) assert.equal(Number(cell), v, `${f}`);
    else assert.equal(cell, v);
  });
}

const T0 = Date.UTC(2026, 10, 20, 23, 58, 0); // spans a UTC midnight, so two partitions

function craftedReadings(): Reading[] {
  const out: Reading[] = [];
  const nodes = ['exp-b', 'exp-a', 'exp-c'];
  for (const nodeId of nodes) {
    for (let k = 0; k < 6; k++) {
      out.push({
        nodeId,
        ts: T0 + k * 60_000,
        powerKw: k === 2 ? -0.1 - 0.2 : 812.4 + k / 3,
        voltageV: k % 2 ? null : 400.25,
        frequencyHz: 50 + k / 1000,
        temperatureC: k === 3 ? -1e-7 : null,
        gridExportKw: k === 4 ? 123456789.123 : null,
        healthStatus: k === 5 ? 'fault' : 'ok',
        quality: k === 1 ? null : 'measured',
        extra:
          k === 0
            ? { alarms: ['over-temp, phase L1', 'said "stop"'], phaseL1V: 230.1, nested: { a: [1, 2, { b: null }] }, note: 'line1\nline2' }
            : k === 3
              ? { unicode: 'Grüße ⚡', empty: '' }
              : null,
      });
    }
  }
  return out;
}

describe('telemetry export', () => {
  let t: TestApp;
  const readings = craftedReadings();

  before(async () => {
    t = await createTestApp();
    for (const id of ['exp-a', 'exp-b', 'exp-c', 'exp-empty']) await addNode(t, id);
    await insertReadings(t, readings);
    await t.container.nodes.reloadAll();
  });
  after(async () => t?.close());

  const get = (qs: string, opts: { key?: string | null; headers?: Record<string, string> } = {}) =>
    t.request({ method: 'GET', url: `/api/telemetry/export?${qs}`, key: opts.key === undefined ? KEYS.read : opts.key, headers: opts.headers });

  test('CSV: header, quoting, nulls, numbers and order by (nodeId, timestamp) are exact', async () => {
    const from = T0 + 60_000;
    const to = T0 + 5 * 60_000; // the reading at `to` is excluded, the one at `from` included
    const r = await get(`nodeIds=exp-c,exp-a&from=${new Date(from).toISOString()}&to=${to}&format=csv`);
    assert.equal(r.statusCode, 200, r.body);
    assert.match(String(r.headers['content-type']), /^text\/csv/);
    const rows = parseCsv(r.body);
    assert.deepEqual(rows[0], ['nodeId', 'timestamp', ...ALL_FIELDS]);
    const want = expectedRows(readings, ['exp-a', 'exp-c'], from, to);
    assert.equal(want.length, 8);
    assert.equal(rows.length - 1, want.length);
    want.forEach((w, i) => assertCsvRow(rows[i + 1], w, ALL_FIELDS));
    assert.ok(r.body.endsWith('\n'));
  });

  test('CSV quotes cells with commas, quotes and line breaks (RFC 4180)', async () => {
    const r = await get(`nodeIds=exp-b&from=${T0}&to=${T0 + 60_000}&fields=extra,healthStatus`);
    assert.equal(r.statusCode, 200, r.body);
    // The default format is CSV.
    assert.match(String(r.headers['content-type']), /^text\/csv/);
    const lines = r.body.split('\n');
    assert.equal(lines[0], 'nodeId,timestamp,extra,healthStatus');
    const extra = readings.find((x) => x.nodeId === 'exp-b' && x.ts === T0)?.extra;
    // The JSON text of extra holds commas and quotes: the cell must be quoted with inner quotes doubled.
    assert.ok(lines[1].startsWith(`exp-b,${new Date(T0).toISOString()},"{`), lines[1]);
    assert.ok(lines[1].includes('""alarms""'), lines[1]);
    const rows = parseCsv(r.body);
    assert.equal(rows.length, 2);
    assert.deepEqual(JSON.parse(rows[1][2]), extra);
    assert.equal(rows[1][3], 'ok');
  });

  test('NDJSON: one reading per line in API shape, nulls omitted, extra as JSON', async () => {
    const from = T0;
    const to = T0 + 10 * 60_000;
    const r = await get(`nodeIds=exp-b&nodeIds=exp-a,exp-c&from=${from}&to=${to}&format=ndjson`);
    assert.equal(r.statusCode, 200, r.body);
    assert.match(String(r.headers['content-type']), /^application\/x-ndjson/);
    assert.ok(r.body.endsWith('\n'));
    const lines = r.body.trimEnd().split('\n');
    const want = expectedRows(readings, ['exp-a', 'exp-b', 'exp-c'], from, to);
    assert.equal(lines.length, want.length);
    lines.forEach((line, i) => assert.deepEqual(JSON.parse(line), apiShape(want[i], ALL_FIELDS)));
  });

  test('Accept: application/x-ndjson selects NDJSON when format is not given', async () => {
    const r = await get(`nodeIds=exp-a&from=${T0}&to=${T0 + 120_000}`, { headers: { accept: 'application/x-ndjson' } });
    assert.equal(r.statusCode, 200);
    assert.match(String(r.headers['content-type']), /^application\/x-ndjson/);
    assert.equal(r.body.trimEnd().split('\n').length, 2);
  });

  test('fields limits the columns; nodeId and timestamp always present; receivedAt on request', async () => {
    const r = await get(`nodeIds=exp-a&from=${T0}&to=${T0 + 3 * 60_000}&fields=frequencyHz,nodeId,powerKw,frequencyHz,receivedAt&format=ndjson`);
    assert.equal(r.statusCode, 200, r.body);
    const lines = r.body.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 3);
    const want = expectedRows(readings, ['exp-a'], T0, T0 + 3 * 60_000);
    lines.forEach((o, i) => {
      assert.deepEqual(Object.keys(o), ['nodeId', 'timestamp', 'frequencyHz', 'powerKw', 'receivedAt']);
      assert.equal(o.powerKw, want[i].powerKw);
      assert.equal(o.frequencyHz, want[i].frequencyHz);
      // Readings were inserted moments ago (received_at defaults to now()).
      assert.ok(Math.abs(Date.parse(o.receivedAt as string) - Date.now()) < 120_000);
    });
    const csv = await get(`nodeIds=exp-a&from=${T0}&to=${T0 + 3 * 60_000}&fields=quality,powerKw`);
    const rows = parseCsv(csv.body);
    assert.deepEqual(rows[0], ['nodeId', 'timestamp', 'quality', 'powerKw']);
    want.forEach((w, i) => assertCsvRow(rows[i + 1], w, ['quality', 'powerKw']));
  });

  test('a node without readings in range: CSV is the header alone, NDJSON is empty', async () => {
    const csv = await get(`nodeIds=exp-empty&from=${T0}&to=${T0 + 3_600_000}`);
    assert.equal(csv.statusCode, 200);
    assert.equal(csv.body, `nodeId,timestamp,${ALL_FIELDS.join(',')}\n`);
    const nd = await get(`nodeIds=exp-empty&from=${T0}&to=${T0 + 3_600_000}&format=ndjson`);
    assert.equal(nd.statusCode, 200);
    assert.equal(nd.body, '');
  });

  test('real data: a month of NESO national demand exports exactly', async () => {
    const text = await readFile('/work/shared/data/neso-historic-demand-2021/demanddata_2021.csv', 'utf8');
    const rows = text.trim().split('\n').slice(1).map((l) => l.split(','));
    const months: Record<string, number> = { JAN: 0 };
    const neso: Reading[] = [];
    for (const r of rows) {
      const [d, mon, y] = r[0].split('-');
      if (!(mon in months)) continue;
      // January is GMT: period p of day D starts at D 00:00Z + (p − 1) × 30 min.
      const ts = Date.UTC(Number(y), months[mon], Number(d)) + (Number(r[1]) - 1) * 1_800_000;
      neso.push({ nodeId: 'neso-gb', ts, powerKw: Number(r[2]) * 1000, windSpeedMs: null, gridImportKw: Number(r[11]) * 1000, extra: { tsd: Number(r[3]) } });
    }
    assert.equal(neso.length, 31 * 48);
    await addNode(t, 'neso-gb', 1800, 60_000_000);
    await t.container.nodes.reloadAll();
    await insertReadings(t, neso);
    const from = Date.UTC(2021, 0, 1);
    const to = Date.UTC(2021, 1, 1);
    const r = await get(`nodeIds=neso-gb&from=2021-01-01T00:00:00Z&to=2021-02-01T00:00:00%2B00:00&format=ndjson&fields=powerKw,gridImportKw,extra`);
    assert.equal(r.statusCode, 200, r.body);
    const lines = r.body.trimEnd().split('\n');
    const want = expectedRows(neso, ['neso-gb'], from, to);
    assert.equal(lines.length, 1488);
    lines.forEach((l, i) => assert.deepEqual(JSON.parse(l), apiShape(want[i], ['powerKw', 'gridImportKw', 'extra'])));
    // Sum of national demand over January, MWh (half-hour means × 0.5 h), against the file.
    const total = lines.reduce((s, l) => s + (JSON.parse(l) as { powerKw: number }).powerKw / 1000 / 2, 0);
    const fileTotal = rows.filter((r) => r[0].includes('-JAN-')).reduce((s, r) => s + Number(r[2]) / 2, 0);
    assert.equal(total, fileTotal);
  });

  test('both routes are in the OpenAPI document', async () => {
    const r = await t.request({ method: 'GET', url: '/docs/openapi.json', key: null });
    assert.equal(r.statusCode, 200);
    const paths = (r.json() as { paths: Record<string, unknown> }).paths;
    assert.ok(paths['/api/telemetry/export'], 'export route missing from OpenAPI');
    assert.ok(paths['/api/data-quality/{nodeId}'], 'data-quality route missing from OpenAPI');
  });

  describe('bad input gets a 4xx envelope before the first byte', () => {
    const cases: [string, string, number, string][] = [
      ['no nodeIds', `from=${T0}&to=${T0 + 1000}`, 400, 'VALIDATION_ERROR'],
      ['empty nodeIds', `nodeIds=&from=${T0}&to=${T0 + 1000}`, 400, 'VALIDATION_ERROR'],
      ['an empty id in the list', `nodeIds=exp-a,,exp-b&from=${T0}&to=${T0 + 1000}`, 400, 'VALIDATION_ERROR'],
      ['a malformed id', `nodeIds=exp-a,bad%20id!&from=${T0}&to=${T0 + 1000}`, 400, 'VALIDATION_ERROR'],
      ['too many ids', `nodeIds=${Array.from({ length: 1001 }, (_, i) => `n${i}`).join(',')}&from=${T0}&to=${T0 + 1000}`, 400, 'TOO_MANY_NODES'],
      ['no from', `nodeIds=exp-a&to=${T0}`, 400, 'VALIDATION_ERROR'],
      ['a bad from', `nodeIds=exp-a&from=yesterday&to=${T0}`, 400, 'INVALID_TIME'],
      ['an impossible date', `nodeIds=exp-a&from=2026-02-30T00:00:00Z&to=${T0}`, 400, 'INVALID_TIME'],
      ['a time without offset', `nodeIds=exp-a&from=2026-11-20T00:00:00&to=${T0}`, 400, 'INVALID_TIME'],
      ['from after to', `nodeIds=exp-a&from=${T0 + 1000}&to=${T0}`, 400, 'INVALID_RANGE'],
      ['from equal to', `nodeIds=exp-a&from=${T0}&to=${T0}`, 400, 'INVALID_RANGE'],
      ['an unknown field', `nodeIds=exp-a&from=${T0}&to=${T0 + 1000}&fields=powerKw,colour`, 400, 'VALIDATION_ERROR'],
      ['an unknown format', `nodeIds=exp-a&from=${T0}&to=${T0 + 1000}&format=xml`, 400, 'VALIDATION_ERROR'],
      // Unknown parameters are refused, as by the historical query (a misspelt one is never ignored).
      ['an unknown parameter', `nodeIds=exp-a&from=${T0}&to=${T0 + 1000}&tz=America/New_York`, 400, 'VALIDATION_ERROR'],
      ['an unknown node', `nodeIds=exp-a,ghost-1&from=${T0}&to=${T0 + 1000}`, 404, 'NODE_NOT_FOUND'],
    ];
    for (const [name, qs, status, code] of cases) {
      test(name, async () => {
        const r = await get(qs);
        assert.equal(r.statusCode, status, r.body);
        const body = r.json() as { error: { code: string; message: string; details: { path: string; message: string }[] } };
        assert.equal(body.error.code, code);
        assert.equal(typeof body.error.message, 'string');
        assert.ok(Array.isArray(body.error.details));
      });
    }
    test('details name the offending entries', async () => {
      const r = await get(`nodeIds=exp-a,bad%20id,ok-1,x%2Fy&from=${T0}&to=${T0 + 1000}`);
      assert.deepEqual(
        (r.json() as { error: { details: { path: string }[] } }).error.details.map((d) => d.path),
        ['/nodeIds/1', '/nodeIds/3'],
      );
      const u = await get(`nodeIds=ghost-2,exp-a,ghost-1&from=${T0}&to=${T0 + 1000}`);
      assert.deepEqual((u.json() as { error: { details: { message: string }[] } }).error.details.map((d) => d.message), ['unknown node "ghost-1"', 'unknown node "ghost-2"']);
    });
    test('no key → 401, a key without read → 403', async () => {
      const qs = `nodeIds=exp-a&from=${T0}&to=${T0 + 1000}`;
      assert.equal((await get(qs, { key: null })).statusCode, 401);
      const f = await get(qs, { key: KEYS.telemetry });
      assert.equal(f.statusCode, 403);
      assert.equal((f.json() as { error: { code: string } }).error.code, 'FORBIDDEN');
    });
  });
});

/**
 * The HTTP client of the big-export test, run with `node -e` in a child process: counts bytes and
 * lines and checks the order of every line (node ascending, extra.seq ascending within a node).
 */
const CLIENT = `
const http = require('node:http');
const [url, key] = process.argv.slice(1);
http.get(url, { headers: { authorization: 'Bearer ' + key } }, (res) => {
  let bytes = 0, lines = 0, tail = '', inOrder = true, node = '', seq = -1;
  res.setEncoding('utf8');
  res.on('data', (chunk) => {
    bytes += Buffer.byteLength(chunk);
    const parts = (tail + chunk).split('\\n');
    tail = parts.pop();
    for (const p of parts) {
      lines++;
      const o = JSON.parse(p);
      if (o.nodeId < node || (o.nodeId === node && o.extra.seq <= seq)) inOrder = false;
      node = o.nodeId;
      seq = o.extra.seq;
    }
  });
  res.on('end', () => process.stdout.write(JSON.stringify({ status: res.statusCode, bytes, lines, inOrder, tail })));
});
`;

describe('telemetry export over HTTP: big ranges, constant memory, client abort', () => {
  let t: TestApp;
  let base: string;
  const NODES = 3;
  const PER_NODE = 90_000; // 270,000 readings
  const START = Date.UTC(2026, 10, 10);
  // ~400 bytes of extra per reading: the export is well over 100 MB, far more than the memory bound below.
  const FAT = 'x'.repeat(360);

  before(async () => {
    t = await createTestApp();
    const pool = t.container.db.pool;
    for (let n = 0; n < NODES; n++) await addNode(t, `big-${n}`, 1);
    await t.container.nodes.reloadAll();
    await ensurePartitions(t, START, START + PER_NODE * 1000);
    await pool.query(
      `INSERT INTO telemetry (node_id, ts, power_kw, voltage_v, frequency_hz, health_status, quality, extra)
       SELECT 'big-' || n, $1::timestamptz + make_interval(secs => i), (i % 1000) / 7.0, 400 + (i % 10), 50.0, 'ok', 'measured',
              jsonb_build_object('seq', i, 'pad', $3::text)
         FROM generate_series(0, $4 - 1) n, generate_series(0, $2 - 1) i`,
      [new Date(START).toISOString(), PER_NODE, FAT, NODES],
    );
    await pool.query('ANALYZE telemetry');
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
  });
  after(async () => t?.close());

  const exportUrl = (format = 'ndjson') =>
    `${base}/api/telemetry/export?nodeIds=${Array.from({ length: NODES }, (_, n) => `big-${n}`).join(',')}&from=${START}&to=${START + PER_NODE * 1000}&format=${format}`;

  function open(url: string): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = http.get(url, { headers: { authorization: `Bearer ${KEYS.read}` } }, resolve);
      req.on('error', reject);
    });
  }

  async function exportActivity(): Promise<number> {
    const { rows } = await t.container.db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '/* telemetry-export */%'`,
    );
    return rows[0].n;
  }

  async function metric(name: string): Promise<number> {
    const r = await t.request({ method: 'GET', url: '/metrics', key: null });
    const line = r.body.split('\n').find((l) => l.startsWith(name));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  test('270,000 readings stream in order while the server RSS growth stays bounded', async (ctx) => {
    // The client runs in a child process, so this process's RSS is the server's alone.
    const BOUND = 64 * 2 ** 20;
    const rss0 = process.memoryUsage().rss;
    let peak = rss0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 10);
    let result: { status: number; bytes: number; lines: number; inOrder: boolean; tail: string };
    try {
      const out = await new Promise<string>((resolve, reject) =>
        execFile(process.execPath, ['-e', CLIENT, exportUrl(), KEYS.read], { maxBuffer: 1 << 20 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
      );
      result = JSON.parse(out) as typeof result;
    } finally {
      clearInterval(sampler);
    }
    assert.equal(result.status, 200);
    assert.equal(result.tail, '');
    assert.equal(result.lines, NODES * PER_NODE);
    assert.ok(result.inOrder, 'readings out of (nodeId, timestamp) order');
    assert.ok(result.bytes > 2 * BOUND, `export only ${result.bytes} bytes: too small to prove a memory bound`);
    const growth = peak - rss0;
    ctx.diagnostic(`server RSS growth ${Math.round(growth / 2 ** 20)} MiB while streaming ${Math.round(result.bytes / 2 ** 20)} MiB`);
    assert.ok(growth < BOUND, `RSS grew ${Math.round(growth / 2 ** 20)} MiB while streaming ${Math.round(result.bytes / 2 ** 20)} MiB`);
    assert.equal(await exportActivity(), 0);
  });

  test('a client that disconnects mid-export stops the query and frees the connection', async () => {
    const abortedBefore = await metric('telemetry_exports_total{outcome="aborted"}');
    const res = await open(exportUrl('csv'));
    assert.equal(res.statusCode, 200);
    // Read a little, then stop reading: the server is held by back-pressure with its cursor open.
    await new Promise<void>((resolve) => res.once('data', () => resolve()));
    res.pause();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await exportActivity(), 1, 'the export query should be open while the client is connected');
    res.destroy();
    let open_ = 1;
    for (let i = 0; i < 50 && open_ > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      open_ = await exportActivity();
    }
    assert.equal(open_, 0, 'the export query outlived its client');
    assert.equal(await metric('telemetry_exports_active'), 0);
    assert.equal(await metric('telemetry_exports_total{outcome="aborted"}'), abortedBefore + 1);
    // The pool is healthy afterwards.
    const again = await t.request({ method: 'GET', url: `/api/telemetry/export?nodeIds=big-0&from=${START}&to=${START + 5000}`, key: KEYS.read });
    assert.equal(again.statusCode, 200);
    assert.equal(parseCsv(again.body).length, 6);
  });

  test('a client that stops reading is cut off after the stall time: its query ends and its connection returns', { timeout: 20_000 }, async () => {
    const outcomes: string[] = [];
    const pool = t.container.db.readPool;
    const idle0 = pool.idleCount + (pool.totalCount - pool.idleCount);
    const stream = await openExportStream(pool, { nodeIds: ['big-0'], from: START, to: START + PER_NODE * 1000, fields: ['powerKw'], format: 'csv' }, { stallMs: 300, onEnd: (o) => outcomes.push(o) });
    // A consumer that takes the first chunk and never acknowledges it: the pipe stalls behind it.
    let taken = 0;
    stream.pipe(new Writable({ highWaterMark: 1, write: (_chunk, _enc, _cb) => void taken++ }));
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(await exportActivity(), 1, 'the export is open while the consumer is slow but within the stall time');
    await new Promise<void>((resolve) => stream.once('close', () => resolve()));
    assert.equal(taken, 1);
    for (let i = 0; i < 50 && outcomes.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(outcomes, ['stalled']);
    let open_ = 1;
    for (let i = 0; i < 50 && open_ > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      open_ = await exportActivity();
    }
    assert.equal(open_, 0, 'the stalled export query is still running');
    assert.ok(pool.totalCount <= idle0 + 1);
  });

  test('clients that give up before the first byte leak no connection', async () => {
    // Disconnects at a spread of moments: before the handler, during the first fetch, just after the headers.
    for (const delay of [0, 1, 2, 3, 5, 8, 13, 21]) {
      const req = http.get(exportUrl(), { headers: { authorization: `Bearer ${KEYS.read}` } }, (res) => res.resume());
      req.on('error', () => undefined);
      await new Promise((r) => setTimeout(r, delay));
      req.destroy();
      await new Promise((r) => setTimeout(r, 20));
    }
    let n = 1;
    for (let i = 0; i < 50 && n > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      n = (await exportActivity()) + (await metric('telemetry_exports_active'));
    }
    assert.equal(n, 0, 'an export outlived its client');
    const ok = await t.request({ method: 'GET', url: `/api/telemetry/export?nodeIds=big-0&from=${START}&to=${START + 5000}`, key: KEYS.read });
    assert.equal(ok.statusCode, 200);
  });

  test('more concurrent exports than allowed get 503 with Retry-After', async () => {
    const held: http.IncomingMessage[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const res = await open(exportUrl());
        assert.equal(res.statusCode, 200);
        res.pause();
        held.push(res);
      }
      const r = await t.request({ method: 'GET', url: `/api/telemetry/export?nodeIds=big-0&from=${START}&to=${START + 5000}`, key: KEYS.read });
      assert.equal(r.statusCode, 503);
      assert.equal((r.json() as { error: { code: string } }).error.code, 'EXPORT_BUSY');
      assert.ok(Number(r.headers['retry-after']) > 0);
    } finally {
      for (const h of held) h.destroy();
    }
    for (let i = 0; i < 50 && (await metric('telemetry_exports_active')) > 0; i++) await new Promise((r) => setTimeout(r, 100));
    const ok = await t.request({ method: 'GET', url: `/api/telemetry/export?nodeIds=big-0&from=${START}&to=${START + 5000}`, key: KEYS.read });
    assert.equal(ok.statusCode, 200);
  });

  test('closing the app cuts running exports instead of waiting for them', async () => {
    const res = await open(exportUrl());
    assert.equal(res.statusCode, 200);
    res.pause();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await exportActivity(), 1);
    const cut = new Promise<void>((resolve) => res.once('close', () => resolve()));
    res.resume();
    res.on('data', () => undefined);
    res.on('error', () => undefined);
    const t0 = Date.now();
    await t.app.close();
    await cut;
    assert.ok(Date.now() - t0 < 5000, `app.close took ${Date.now() - t0} ms`);
    assert.equal(res.complete, false, 'the export should have been cut short');
    for (let i = 0; i < 50 && (await exportActivity()) > 0; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await exportActivity(), 0);
  });
});

describe('telemetry export end to end through ingestion', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
    await addNode(t, 'e2e-b');
    await addNode(t, 'e2e-a');
    await t.container.nodes.reloadAll();
  });
  after(async () => t?.close());

  test('readings posted in a batch come back exactly, with corrections applied', async () => {
    const base = Math.floor(Date.now() / 60_000) * 60_000 - 20 * 60_000;
    const sent: Record<string, unknown>[] = [];
    for (const nodeId of ['e2e-b', 'e2e-a']) {
      for (let k = 0; k < 10; k++) {
        const r: Record<string, unknown> = { nodeId, timestamp: new Date(base + k * 60_000).toISOString(), powerKw: (k - 4.5) * 10.1 };
        if (k % 2 === 0) r.voltageV = 399.9 + k;
        if (k % 3 === 0) r.stateOfChargePct = 12.5 * (k / 3);
        if (k === 4) r.extra = { alarms: ['a,b', 'quote "q"'], phaseL1V: 230.1 };
        if (k === 5) r.healthStatus = 'warning';
        if (k === 6) r.quality = 'estimated';
        sent.push(r);
      }
    }
    const post = await t.request({ method: 'POST', url: '/api/telemetry/batch', key: KEYS.writer, payload: { readings: sent } });
    assert.equal(post.statusCode, 200, post.body);
    assert.equal(post.json().stored, 20);
    // A correction replaces the stored reading: the export shows the new values.
    const corrected = { nodeId: 'e2e-a', timestamp: new Date(base + 3 * 60_000).toISOString(), powerKw: 7.25, temperatureC: -3.5 };
    const fix = await t.request({ method: 'POST', url: '/api/telemetry/batch', key: KEYS.writer, payload: { readings: [corrected] } });
    assert.equal(fix.statusCode, 200, fix.body);
    const expectedReadings: Record<string, unknown>[] = sent.map((r) => (r.nodeId === corrected.nodeId && r.timestamp === corrected.timestamp ? corrected : r));
    expectedReadings.sort((a, b) => (a.nodeId === b.nodeId ? Date.parse(a.timestamp as string) - Date.parse(b.timestamp as string) : (a.nodeId as string) < (b.nodeId as string) ? -1 : 1));

    const nd = await t.request({ method: 'GET', url: `/api/telemetry/export?nodeIds=e2e-b,e2e-a&from=${base}&to=${base + HOUR_MS}&format=ndjson`, key: KEYS.read });
    assert.equal(nd.statusCode, 200, nd.body);
    const lines = nd.body.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 20);
    lines.forEach((l, i) => assert.deepEqual(l, { ...expectedReadings[i], timestamp: new Date(Date.parse(expectedReadings[i].timestamp as string)).toISOString() }));

    const csv = await t.request({ method: 'GET', url: `/api/telemetry/export?nodeIds=e2e-a,e2e-b&from=${base}&to=${base + HOUR_MS}&fields=powerKw,temperatureC,extra`, key: KEYS.read });
    const rows = parseCsv(csv.body);
    assert.equal(rows.length, 21);
    expectedReadings.forEach((r, i) => {
      assert.equal(rows[i + 1][0], r.nodeId);
      assert.equal(Number(rows[i + 1][2]), r.powerKw);
      assert.equal(rows[i + 1][3], r.temperatureC === undefined ? '' : String(r.temperatureC));
      assert.deepEqual(rows[i + 1][4] === '' ? undefined : JSON.parse(rows[i + 1][4]), r.extra);
    });
  });
});

const HOUR_MS = 3_600_000;
