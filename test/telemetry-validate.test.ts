import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { parseTime } from '../src/http/time.js';
import { parseIsoFast, ReadingValidator, type IngestRow } from '../src/telemetry/validate.js';
import { rng } from '../bench/harness.js';

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

describe('reading validation fast path', () => {
  test('parseIsoFast equals parseTime whenever it answers, and answers the plain UTC forms', () => {
    let answered = 0;
    for (const y of [1999, 2000, 2023, 2024, 2100]) {
      for (let mo = 0; mo <= 13; mo++) {
        for (const d of [0, 1, 28, 29, 30, 31, 32]) {
          for (const [h, mi, s] of [[0, 0, 0], [23, 59, 59], [24, 0, 0], [12, 60, 0], [12, 0, 60], [7, 5, 9]]) {
            const base = `${y}-${pad(mo)}-${pad(d)}T${pad(h)}:${pad(mi)}:${pad(s)}`;
            for (const v of [`${base}Z`, `${base}.123Z`, `${base}.000Z`, `${base}z`, `${base}.1Z`, `${base}.123456Z`, `${base}+00:00`, `${base} Z`]) {
              const fast = parseIsoFast(v);
              if (fast !== undefined) {
                answered++;
                assert.equal(fast, parseTime(v), v);
              }
            }
          }
        }
      }
    }
    assert.equal(parseIsoFast('2024-02-29T10:00:00.250Z'), Date.UTC(2024, 1, 29, 10, 0, 0, 250));
    assert.equal(parseIsoFast('2023-02-29T10:00:00Z'), undefined);
    assert.equal(parseIsoFast('2100-02-29T10:00:00Z'), undefined);
    assert.ok(answered > 1000, `answered ${answered}`);
    for (const bad of ['2024-0a-01T00:00:00Z', '2024-01-01T00:00:00', '0999-01-01T00:00:00Z', '2024/01/01T00:00:00Z', '', 'x'.repeat(24)]) assert.equal(parseIsoFast(bad), undefined, bad);
  });

  test('RFC 3339 fractions of any length are read (to the millisecond, truncated)', () => {
    assert.equal(parseTime('2026-11-27T10:15:00.123456789012Z'), Date.UTC(2026, 10, 27, 10, 15, 0, 123));
    assert.equal(parseTime('2026-11-27T10:15:00.9999999999999999+01:00'), Date.UTC(2026, 10, 27, 9, 15, 0, 999));
    assert.equal(parseTime('2026-11-27T10:15:00.Z'), undefined);
    const v = new ReadingValidator({ node: () => ({ capacityKw: 100, telemetryIntervalSeconds: 60 }) as never, acceptUnknownNodes: false, retentionDays: 30 });
    const now = Date.UTC(2026, 10, 27, 12, 0, 0);
    const row = v.checkBatchReading({ nodeId: 'n-1', timestamp: '2026-11-27T10:15:00.123456789012Z', powerKw: 1 }, 0, now) as IngestRow;
    assert.equal(row.ts, Date.UTC(2026, 10, 27, 10, 15, 0, 123));
  });

  test('epoch milliseconds in a body are a JSON number: digits in a string are not a time', () => {
    const v = new ReadingValidator({ node: () => ({ capacityKw: 100, telemetryIntervalSeconds: 60 }) as never, acceptUnknownNodes: false, retentionDays: 30 });
    const now = Date.UTC(2026, 10, 27, 12, 0, 0);
    assert.equal((v.checkBatchReading({ nodeId: 'n-1', timestamp: now - 60_000, powerKw: 1 }, 0, now) as IngestRow).ts, now - 60_000);
    for (const text of [String(now - 60_000), '002026']) {
      const r = v.checkBatchReading({ nodeId: 'n-1', timestamp: text, powerKw: 1 }, 3, now) as { rejection?: { errors: { path: string }[] } };
      assert.deepEqual(r.rejection?.errors.map((e) => e.path), ['/readings/3/timestamp'], text);
    }
  });

  test('check() (fast path first) gives exactly what the schema path gives, for valid and invalid readings', () => {
    const now = Date.UTC(2026, 10, 27, 12, 0, 0);
    const nodes = new Map([['n-1', { capacityKw: 100, telemetryIntervalSeconds: 60 }]]);
    for (const acceptUnknownNodes of [false, true]) {
      const v = new ReadingValidator({ node: (id) => nodes.get(id) as never, acceptUnknownNodes, retentionDays: 30 });
      const full = (v as unknown as { full(input: unknown, index: number, prefix: string, now: number, pathNodeId?: string): IngestRow | object }).full.bind(v);
      const rand = rng(7);
      const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
      const good = { nodeId: 'n-1', timestamp: new Date(now - 60_000).toISOString(), powerKw: 5, voltageV: 230, frequencyHz: 50, stateOfChargePct: 50, healthStatus: 'ok', quality: 'measured', extra: { a: 1 } };
      const mutations: [string, unknown][] = [
        ['nodeId', 'ghost'], ['nodeId', 'bad id'], ['nodeId', 7], ['nodeId', undefined],
        ['timestamp', now - 120_000], ['timestamp', now + 600_000], ['timestamp', 1.5], ['timestamp', -1], ['timestamp', '2026-02-30T00:00:00Z'],
        ['timestamp', '2026-11-27T11:00:00+01:00'], ['timestamp', new Date(now - 40 * 86_400_000).toISOString()], ['timestamp', ''], ['timestamp', undefined], ['timestamp', String(now - 60_000)],
        ['powerKw', undefined], ['powerKw', '5'], ['powerKw', 111], ['powerKw', -0], ['powerKw', null],
        ['voltageV', 0], ['voltageV', -0.001], ['frequencyHz', 40], ['frequencyHz', 70], ['frequencyHz', 70.0001], ['frequencyHz', 39.9999],
        ['stateOfChargePct', 0], ['stateOfChargePct', 100], ['stateOfChargePct', 100.1], ['temperatureC', -40], ['irradianceWm2', true],
        ['healthStatus', 'broken'], ['healthStatus', null], ['quality', 'estimated'], ['quality', 3],
        ['extra', [1]], ['extra', null], ['extra', { s: 'a\u0000b' }], ['extra', { blob: 'x'.repeat(4100) }], ['extra', { k: 'ü'.repeat(1500) }], ['extra', {}],
        ['colour', 'red'], ['constructor', 1], ['__proto__', 1],
      ];
      for (let i = 0; i < 3000; i++) {
        const r: Record<string, unknown> = { ...good };
        for (let m = Math.floor(rand() * 3); m > 0; m--) {
          const [k, val] = pick(mutations);
          if (val === undefined) delete r[k];
          else r[k] = val;
        }
        if (rand() < 0.3) delete r.extra;
        if (rand() < 0.3) delete r.healthStatus;
        const input = rand() < 0.02 ? pick<unknown>([null, 'x', [r], 5]) : r;
        assert.deepEqual(v.checkBatchReading(input, i, now), full(input, i, `/readings/${i}`, now), JSON.stringify(input));
        const single = { ...r };
        if (rand() < 0.5) delete single.nodeId;
        assert.deepEqual(v.check(single, 0, '', now, 'n-1'), full(single, 0, '', now, 'n-1'), `single ${JSON.stringify(single)}`);
      }
    }
  });
});
