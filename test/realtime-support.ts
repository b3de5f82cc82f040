/** Helpers for the realtime tests: fleet fixtures written straight to the database, and a real SSE client. */
import http from 'node:http';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Queryable } from '../src/db/pool.js';

export interface FleetNode {
  nodeId: string;
  type: string;
  status: string;
  capacityKw: number;
  storageCapacityKwh: number | null;
  telemetryIntervalSeconds: number;
  /** The latest reading, or none. */
  latest?: { tsMs: number; powerKw: number; stateOfChargePct?: number; healthStatus?: string };
}

export async function insertNodes(db: Queryable, nodes: FleetNode[]): Promise<void> {
  for (const n of nodes) {
    await db.query(
      `INSERT INTO nodes (node_id, type, status, capacity_kw, storage_capacity_kwh, telemetry_interval_seconds, doc)
       VALUES ($1, $2, $3, $4, $5, $6, $7)`,
      [n.nodeId, n.type, n.status, n.capacityKw, n.storageCapacityKwh, n.telemetryIntervalSeconds, JSON.stringify({ nodeId: n.nodeId, name: n.nodeId, type: n.type, status: n.status, capacityKw: n.capacityKw })],
    );
    if (n.latest) await setLatest(db, n.nodeId, n.latest);
  }
}

export function readingOf(l: NonNullable<FleetNode['latest']>): Record<string, unknown> {
  const r: Record<string, unknown> = { timestamp: new Date(l.tsMs).toISOString(), powerKw: l.powerKw };
  if (l.stateOfChargePct !== undefined) r.stateOfChargePct = l.stateOfChargePct;
  if (l.healthStatus !== undefined) r.healthStatus = l.healthStatus;
  return r;
}

/** Upserts a node's row in telemetry_latest, as ingestion does. */
export async function setLatest(db: Queryable, nodeId: string, l: NonNullable<FleetNode['latest']>): Promise<void> {
  await db.query(
    `INSERT INTO telemetry_latest (node_id, ts, received_at, reading) VALUES ($1, $2::timestamptz, now(), $3)
     ON CONFLICT (node_id) DO UPDATE SET ts = excluded.ts, received_at = excluded.received_at, reading = excluded.reading`,
    [nodeId, new Date(l.tsMs).toISOString(), JSON.stringify({ nodeId, ...readingOf(l) })],
  );
}

/** Real half-hourly PV generation (GG) and household consumption (GC) in kW, Ausgrid customer 12. */
export function ausgridRows(limit: number): { time: string; consumptionKw: number; generationKw: number }[] {
  const text = readFileSync('/work/shared/data/ausgrid-solar-home-customer12/data_2011-2012.csv', 'utf8');
  const out: { time: string; consumptionKw: number; generationKw: number }[] = [];
  for (const line of text.split('\n').slice(1)) {
    if (!line) continue;
    const [time, gc, gg] = line.split(',');
    // Daylight rows only, so PV values are not all zero.
    if (Number(gg) <= 0) continue;
    out.push({ time, consumptionKw: Number(gc), generationKw: Number(gg) });
    if (out.length >= limit) break;
  }
  return out;
}

export interface SseEvent {
  id?: string;
  event: string;
  data: string;
  receivedAt: number;
}

export interface SseClient {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** Body when the answer was not a stream (an error envelope). */
  body?: string;
  events: SseEvent[];
  comments: string[];
  retry?: number;
  waitFor(pred: (events: SseEvent[]) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  close(): void;
}

export async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address() as AddressInfo;
  return `http://127.0.0.1:${addr.port}`;
}

/** Opens a real SSE connection and parses the frames as they arrive (per the WHATWG event-stream rules we use). */
export function openSse(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { accept: 'text/event-stream', ...headers }, agent: false });
    req.on('error', reject);
    req.on('response', (res) => {
      const client: SseClient = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        events: [],
        comments: [],
        async waitFor(pred, timeoutMs = 3000, what = 'events') {
          const t0 = Date.now();
          while (!pred(client.events)) {
            if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(client.events.map((e) => [e.event, e.id]))}`);
            await new Promise((r) => setTimeout(r, 10));
          }
        },
        close() {
          req.destroy();
        },
      };
      if (!String(res.headers['content-type'] ?? '').startsWith('text/event-stream')) {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ ...client, body }));
        return;
      }
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev: Partial<SseEvent> = {};
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) client.comments.push(line.slice(1).trim());
            else if (line.startsWith('id: ')) ev.id = line.slice(4);
            else if (line.startsWith('event: ')) ev.event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
            else if (line.startsWith('retry: ')) client.retry = Number(line.slice(7));
          }
          if (data.length) client.events.push({ id: ev.id, event: ev.event ?? 'message', data: data.join('\n'), receivedAt: Date.now() });
        }
      });
      res.on('error', () => undefined);
      resolve(client);
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
