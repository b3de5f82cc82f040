import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { backends, createTestApp, KEYS, type TestApp } from './support/app.js';
import type { RealtimeDomain } from '../src/realtime/index.js';
import { compareEventIds } from '../src/realtime/event-log.js';
import { DEFAULT_STREAM_LIMITS, TELEMETRY_LATEST_CHANNEL } from '../src/realtime/stream.js';
import { PORTFOLIO_CACHE_KEY } from '../src/realtime/portfolio.js';
import { ausgridRows, insertNodes, listen, openSse, sleep, type FleetNode, type SseClient, type SseEvent } from './realtime-support.js';

function realtimeOf(t: TestApp): RealtimeDomain {
  const d = t.container.domains.find((x) => 'hub' in x && 'portfolio' in x);
  assert.ok(d, 'realtime domain registered');
  return d as RealtimeDomain;
}

const NODES: FleetNode[] = [
  { nodeId: 'pv-1', type: 'solar', status: 'active', capacityKw: 1.04, storageCapacityKwh: null, telemetryIntervalSeconds: 1800 },
  { nodeId: 'home-1', type: 'demand_response', status: 'active', capacityKw: 5, storageCapacityKwh: null, telemetryIntervalSeconds: 1800 },
  { nodeId: 'bat-1', type: 'battery', status: 'active', capacityKw: 100, storageCapacityKwh: 200, telemetryIntervalSeconds: 60 },
  { nodeId: 'bat-2', type: 'battery', status: 'active', capacityKw: 100, storageCapacityKwh: 200, telemetryIntervalSeconds: 60 },
];

// Real readings: Ausgrid customer 12's rooftop PV and household load, one half-hour per message.
const REAL = ausgridRows(500);
let realIndex = 0;

/** One node's `telemetry.latest` change, with real values (ingestion publishes an array of these per write). */
function message(nodeId: string, extra?: Record<string, unknown>): string {
  const row = REAL[realIndex++ % REAL.length];
  const ts = new Date().toISOString();
  const powerKw = nodeId.startsWith('pv') ? row.generationKw : nodeId.startsWith('home') ? -row.consumptionKw : row.generationKw - row.consumptionKw;
  const reading: Record<string, unknown> = { timestamp: ts, powerKw, healthStatus: 'ok', quality: 'measured' };
  if (extra) reading.extra = extra;
  return JSON.stringify({ nodeId, timestamp: ts, receivedAt: ts, reading });
}

function telemetry(c: SseClient): (SseEvent & { body: { nodeId: string; type: string | null; reading: { powerKw: number } } })[] {
  return c.events.filter((e) => e.event === 'telemetry').map((e) => ({ ...e, body: JSON.parse(e.data) }));
}

function assertIncreasing(ids: (string | undefined)[]): void {
  for (let i = 1; i < ids.length; i++) {
    assert.ok(ids[i] !== undefined && ids[i - 1] !== undefined && compareEventIds(ids[i - 1] as string, ids[i] as string) < 0, `ids increase: ${ids.join(' ')}`);
  }
}

/** Waits until the replay log holds at least `n` events after `afterId`. */
async function logged(rt: RealtimeDomain, afterId: string, n: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if ((await rt.log.readAfter(afterId, n)).length >= n) return;
    await sleep(10);
  }
  throw new Error('events never reached the replay log');
}

for (const backend of backends()) {
  describe(`realtime stream (${backend})`, () => {
    let t: TestApp;
    let base: string;
    let rt: RealtimeDomain;
    const open: SseClient[] = [];
    const sse = async (query: string, headers: Record<string, string> = { authorization: `Bearer ${KEYS.read}` }) => {
      const c = await openSse(`${base}/api/realtime/stream${query}`, headers);
      open.push(c);
      return c;
    };
    const publish = (m: string) => t.container.pubsub.publish(TELEMETRY_LATEST_CHANNEL, m);

    before(async () => {
      t = await createTestApp({ backend });
      await insertNodes(t.container.db.pool, NODES);
      await t.container.nodes.reloadAll();
      base = await listen(t.app);
      rt = realtimeOf(t);
    });
    after(async () => {
      for (const c of open) c.close();
      await t?.close();
    });

    test('telemetry events reach clients by filter, with increasing ids', async () => {
      const all = await sse('?events=telemetry');
      const byNode = await sse('?events=telemetry&nodeId=pv-1,bat-1');
      const byType = await sse('?events=telemetry&type=battery');
      const both = await sse('?events=telemetry&type=battery&nodeId=pv-1');
      assert.equal(all.status, 200);
      assert.match(String(all.headers['content-type']), /^text\/event-stream/);
      assert.equal(all.headers['cache-control'], 'no-cache, no-transform');
      assert.equal(all.retry, DEFAULT_STREAM_LIMITS.retryMs);
      for (const id of ['pv-1', 'home-1', 'bat-1', 'bat-2', 'unknown-9']) await publish(message(id));
      await all.waitFor((ev) => ev.length >= 5);
      const got = telemetry(all);
      assert.deepEqual(got.map((e) => e.body.nodeId), ['pv-1', 'home-1', 'bat-1', 'bat-2', 'unknown-9']);
      assert.deepEqual(got.map((e) => e.body.type), ['solar', 'demand_response', 'battery', 'battery', null]);
      assert.ok(got[0].body.reading.powerKw > 0 && got[1].body.reading.powerKw < 0, 'real PV and load values carried');
      assertIncreasing(got.map((e) => e.id));
      await byType.waitFor((ev) => ev.length >= 2);
      await byNode.waitFor((ev) => ev.length >= 2);
      await sleep(100);
      assert.deepEqual(telemetry(byNode).map((e) => e.body.nodeId), ['pv-1', 'bat-1']);
      assert.deepEqual(telemetry(byType).map((e) => e.body.nodeId), ['bat-1', 'bat-2']);
      // Both filters: a node must match both; pv-1 is not a battery.
      assert.equal(both.events.length, 0);
      // The same event has the same id for every client.
      assert.equal(telemetry(byNode)[1].id, got[2].id);
    });

    test('a message with several nodes\' changes, one per line (as ingestion publishes per write), gives one event each, in order, each replayable', async () => {
      const all = await sse('?events=telemetry');
      const batch = ['bat-1', 'pv-1', 'bat-2'].map((id) => message(id)).join('\n');
      await publish(batch);
      await all.waitFor((ev) => ev.length >= 3);
      const got = telemetry(all);
      assert.deepEqual(got.map((e) => e.body.nodeId), ['bat-1', 'pv-1', 'bat-2']);
      assertIncreasing(got.map((e) => e.id));
      // Replaying from the first event's id gives the other two, as their own entries.
      const replay = await sse('?events=telemetry', { authorization: `Bearer ${KEYS.read}`, 'last-event-id': got[0].id as string });
      await replay.waitFor((ev) => ev.length >= 2);
      assert.deepEqual(telemetry(replay).slice(0, 2).map((e) => [e.body.nodeId, e.id]), [['pv-1', got[1].id], ['bat-2', got[2].id]]);
      // A malformed line is skipped; the other lines of its message are delivered.
      await publish(`${message('bat-1')}\n{"nodeId":1}\nnot json`);
      await publish(message('pv-1'));
      await all.waitFor((ev) => ev.length >= 5);
      await sleep(50);
      assert.deepEqual(telemetry(all).slice(3).map((e) => e.body.nodeId), ['bat-1', 'pv-1']);
    });

    test('the key may come as ?apiKey= (EventSource); bad or missing keys get 401/403 envelopes', async () => {
      const ok = await sse(`?events=telemetry&apiKey=${KEYS.read}`, {});
      assert.equal(ok.status, 200);
      await publish(message('bat-2'));
      await ok.waitFor((ev) => ev.length >= 1);
      const none = await sse('', {});
      assert.equal(none.status, 401);
      assert.equal(JSON.parse(none.body ?? '{}').error.code, 'UNAUTHORIZED');
      const unknown = await sse('?apiKey=nope', {});
      assert.equal(unknown.status, 401);
      const wrongScope = await sse(`?apiKey=${KEYS.telemetry}`, {});
      assert.equal(wrongScope.status, 403);
      assert.equal(JSON.parse(wrongScope.body ?? '{}').error.code, 'FORBIDDEN');
    });

    test('Last-Event-ID replays what was missed, filtered, then continues live without repeats', async () => {
      const first = await sse('?events=telemetry&nodeId=pv-1,bat-1');
      await publish(message('pv-1'));
      await first.waitFor((ev) => ev.length >= 1);
      const lastSeen = first.events[0].id;
      assert.ok(lastSeen);
      first.close();
      await sleep(50);
      const missed = ['bat-1', 'home-1', 'pv-1', 'bat-2', 'bat-1'];
      for (const id of missed) await publish(message(id));
      await logged(rt, lastSeen, missed.length);

      const again = await sse('?events=telemetry&nodeId=pv-1,bat-1', { authorization: `Bearer ${KEYS.read}`, 'last-event-id': lastSeen });
      await again.waitFor((ev) => ev.length >= 3, 3000, 'replayed events');
      await publish(message('bat-1'));
      await again.waitFor((ev) => ev.length >= 4, 3000, 'the live event after replay');
      await sleep(100);
      const got = telemetry(again);
      assert.deepEqual(got.map((e) => e.body.nodeId), ['bat-1', 'pv-1', 'bat-1', 'bat-1']);
      assertIncreasing([lastSeen, ...got.map((e) => e.id)]);

      // The query-string form does the same (EventSource polyfills that cannot set the header).
      const viaQuery = await sse(`?events=telemetry&nodeId=home-1&lastEventId=${encodeURIComponent(lastSeen)}`);
      await viaQuery.waitFor((ev) => ev.length >= 1);
      await sleep(100);
      assert.deepEqual(telemetry(viaQuery).map((e) => e.body.nodeId), ['home-1']);
    });

    test('a Last-Event-ID older than the 5-minute window gets a resync event', async () => {
      const old = `${Date.now() - 6 * 60_000}-0`;
      const c = await sse('?events=telemetry', { authorization: `Bearer ${KEYS.read}`, 'last-event-id': old });
      await c.waitFor((ev) => ev.some((e) => e.event === 'resync'));
      const r = JSON.parse(c.events.find((e) => e.event === 'resync')!.data);
      assert.equal(r.reason, 'replay_window');
      await publish(message('pv-1'));
      await c.waitFor((ev) => ev.some((e) => e.event === 'telemetry'));
    });

    test('bad inputs get 400 with the envelope', async () => {
      const cases: [string, Record<string, string>, string][] = [
        ['?nodeId=bad%20id', {}, '/nodeId'],
        ['?nodeId=pv-1,,bat-1', {}, '/nodeId'],
        ['?nodeId=', {}, '/nodeId'],
        [`?nodeId=${'x'.repeat(65)}`, {}, '/nodeId'],
        ['?type=nuclear', {}, '/type'],
        ['?type=solar,', {}, '/type'],
        ['?events=everything', {}, '/events'],
        ['', { 'last-event-id': 'abc' }, '/headers/last-event-id'],
        ['', { 'last-event-id': '12' }, '/headers/last-event-id'],
        ['?lastEventId=1-2-3', {}, '/lastEventId'],
        ['?lastEventId=99999999999999999-0', {}, '/lastEventId'],
        ['?foo=1', {}, '/foo'],
      ];
      for (const [query, headers, path] of cases) {
        const r = await t.request({ method: 'GET', url: `/api/realtime/stream${query}`, headers, key: KEYS.read });
        assert.equal(r.statusCode, 400, `${query} ${JSON.stringify(headers)}: ${r.body}`);
        const body = r.json();
        assert.equal(typeof body.error.code, 'string');
        assert.equal(typeof body.error.message, 'string');
        assert.ok(
          body.error.details.some((d: { path: string }) => d.path === path),
          `${query}: details ${JSON.stringify(body.error.details)} name ${path}`,
        );
      }
    });

    test('portfolio events and heartbeats arrive periodically; portfolio events carry no id', async () => {
      rt.hub.setLimits({ heartbeatMs: 150, portfolioIntervalMs: 200 });
      try {
        const c = await sse('?events=portfolio');
        await c.waitFor((ev) => ev.filter((e) => e.event === 'portfolio').length >= 3, 3000, 'portfolio events');
        await publish(message('pv-1'));
        await sleep(400);
        assert.ok(c.comments.includes('heartbeat'), `heartbeat comments: ${c.comments.join('|')}`);
        assert.equal(c.events.filter((e) => e.event === 'telemetry').length, 0, 'events=portfolio has no telemetry');
        const p = JSON.parse(c.events.find((e) => e.event === 'portfolio')!.data);
        assert.equal(p.nodes, NODES.length);
        assert.equal(typeof p.asOf, 'string');
        assert.ok(c.events.filter((e) => e.event === 'portfolio').every((e) => e.id === undefined));
      } finally {
        rt.hub.setLimits({ heartbeatMs: DEFAULT_STREAM_LIMITS.heartbeatMs, portfolioIntervalMs: DEFAULT_STREAM_LIMITS.portfolioIntervalMs });
      }
    });

    test('a portfolio event is at most 1 s old when sent, even while the cache holds an older snapshot', async () => {
      // A snapshot 4 s old, still within the cache's 5 s: GET /api/realtime/portfolio may serve it, an event may not.
      const stale = { ...(await rt.portfolio.refresh()), nodes: 999, asOf: new Date(Date.now() - 4000).toISOString() };
      await t.container.cache.set(PORTFOLIO_CACHE_KEY, JSON.stringify(stale), 5);
      assert.equal((await rt.portfolio.get()).nodes, 999, 'the cache serves its snapshot to plain reads');
      const c = await sse('?events=portfolio');
      await c.waitFor((ev) => ev.some((e) => e.event === 'portfolio'), 3000, 'first portfolio event');
      const received = Date.now();
      const p = JSON.parse(c.events.find((e) => e.event === 'portfolio')!.data);
      assert.equal(p.nodes, NODES.length, 'not the old snapshot');
      assert.ok(received - Date.parse(p.asOf) <= 1500, `asOf ${p.asOf} is ${received - Date.parse(p.asOf)} ms old`);
    });

    test('sse_clients counts connected clients and drops them on disconnect', async () => {
      for (const c of open.splice(0)) c.close();
      await sleep(100);
      const gauge = async () => {
        const m = await t.request({ method: 'GET', url: '/metrics', key: null });
        const line = m.body.split('\n').find((l) => l.startsWith('sse_clients '));
        return Number(line?.split(' ')[1]);
      };
      assert.equal(await gauge(), 0);
      const a = await sse('?events=telemetry');
      const b = await sse('?events=telemetry');
      assert.equal(await gauge(), 2);
      a.close();
      b.close();
      for (let i = 0; i < 100 && rt.hub.size > 0; i++) await sleep(10);
      assert.equal(await gauge(), 0);
    });

    test('a slow client gets a resync instead of an unbounded backlog; others are not slowed', async () => {
      rt.hub.setLimits({ maxBufferedEvents: 50, maxBufferedBytes: 256 * 1024 });
      const fast = await sse('?events=telemetry&nodeId=bat-2');
      // The slow client: a raw socket that stops reading after the headers.
      const port = new URL(base).port;
      const sock = net.connect(Number(port), '127.0.0.1');
      sock.setNoDelay(true);
      let text = '';
      sock.on('data', (d: Buffer) => {
        text += d.toString('utf8');
      });
      sock.write(`GET /api/realtime/stream?events=telemetry&nodeId=bat-2 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEYS.read}\r\n\r\n`);
      for (let i = 0; i < 200 && !text.includes(': connected'); i++) await sleep(10);
      assert.match(text, /200 OK/);
      sock.pause();
      try {
        const extra = { alarms: [], blob: 'x'.repeat(3500) };
        const total = 4000;
        let maxQueued = 0;
        let maxBytes = 0;
        for (let i = 0; i < total; i++) {
          await publish(message('bat-2', extra));
          // Paced so the fast client, which shares this event loop, gets to read.
          if (i % 10 === 9) await sleep(1);
          if (i % 100 === 99) {
            for (const s of rt.hub.stats()) {
              maxQueued = Math.max(maxQueued, s.queuedEvents);
              maxBytes = Math.max(maxBytes, s.queuedBytes);
            }
          }
        }
        await fast.waitFor((ev) => ev.length >= total, 20_000, 'every event at the fast client');
        assert.equal(telemetry(fast).length, total);
        assert.ok(maxQueued <= 50, `backlog stayed bounded: ${maxQueued} events`);
        assert.ok(maxBytes <= 256 * 1024, `backlog bytes bounded: ${maxBytes}`);
        sock.resume();
        for (let i = 0; i < 500 && !text.includes('event: resync'); i++) await sleep(10);
        assert.ok(text.includes('event: resync'), 'the slow client got a resync event');
        const m = /id: (\S+)\nevent: resync\ndata: (.*)\n/.exec(text);
        assert.ok(m, 'resync carries the id of the last dropped event');
        const r = JSON.parse(m[2]);
        assert.equal(r.reason, 'slow_client');
        assert.ok(r.dropped > 0);
        const metrics = (await t.request({ method: 'GET', url: '/metrics', key: null })).body;
        assert.match(metrics, /sse_resyncs_total\{reason="slow_client"\} [1-9]/);
        // After the resync the client is live again.
        await publish(message('bat-2'));
        const before = text.length;
        for (let i = 0; i < 300 && text.length === before; i++) await sleep(10);
        assert.ok(text.length > before, 'events flow again after the resync');
      } finally {
        sock.destroy();
        rt.hub.setLimits({ maxBufferedEvents: DEFAULT_STREAM_LIMITS.maxBufferedEvents, maxBufferedBytes: DEFAULT_STREAM_LIMITS.maxBufferedBytes });
      }
    });
  });
}
