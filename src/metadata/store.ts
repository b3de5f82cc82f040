import type { Queryable } from '../db/pool.js';
import { EARTH_RADIUS_KM, type BoundingBox } from './geo.js';
import type { NodeDoc } from './schemas.js';

/** A stored node: its document plus version and timestamps. */
export interface NodeRecord {
  doc: NodeDoc;
  version: number;
  createdAt: Date;
  updatedAt: Date;
}

export interface HistoryRecord {
  version: number;
  patch: Record<string, unknown> | null;
  doc: NodeDoc;
  changedAt: Date;
  changedBy: string | null;
}

interface NodeRow {
  doc: NodeDoc;
  version: number;
  created_at: Date;
  updated_at: Date;
}

interface HistoryRow {
  version: number;
  patch: Record<string, unknown> | null;
  doc: NodeDoc;
  changed_at: Date;
  changed_by: string | null;
}

function nodeRowToRecord(r: NodeRow): NodeRecord {
  return { doc: r.doc, version: r.version, createdAt: r.created_at, updatedAt: r.updated_at };
}

function historyRowToRecord(r: HistoryRow): HistoryRecord {
  return { version: r.version, patch: r.patch, doc: r.doc, changedAt: r.changed_at, changedBy: r.changed_by };
}

// node_id is compared and sorted bytewise (COLLATE "C") so keyset order does not depend on the
// database's default collation; the indexes on node_id columns are built the same way.
const NODE_COLUMNS = 'doc, version, created_at, updated_at';

/** The columns queries filter and sort on, derived from the document. */
function columnsOf(doc: NodeDoc): unknown[] {
  return [
    doc.nodeId,
    doc.type,
    doc.status,
    doc.capacityKw,
    doc.storageCapacityKwh ?? null,
    doc.location?.lat ?? null,
    doc.location?.lon ?? null,
    doc.timezone,
    doc.telemetryIntervalSeconds,
    JSON.stringify(doc),
  ];
}

/** Inserts a node at version 1. Throws SQLSTATE 23505 when the nodeId exists. */
export async function insertNode(q: Queryable, doc: NodeDoc): Promise<NodeRecord> {
  const { rows } = await q.query<NodeRow>(
    `INSERT INTO nodes (node_id, type, status, capacity_kw, storage_capacity_kwh, lat, lon, timezone, telemetry_interval_seconds, doc, version)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, 1)
     RETURNING ${NODE_COLUMNS}`,
    columnsOf(doc),
  );
  return nodeRowToRecord(rows[0]);
}

/** Replaces a node's document and sets its version; `updated_at` becomes the transaction time. */
export async function updateNode(q: Queryable, doc: NodeDoc, version: number): Promise<NodeRecord> {
  const { rows } = await q.query<NodeRow>(
    `UPDATE nodes SET type = $2, status = $3, capacity_kw = $4, storage_capacity_kwh = $5, lat = $6, lon = $7,
       timezone = $8, telemetry_interval_seconds = $9, doc = $10::jsonb, version = $11, updated_at = now()
     WHERE node_id = $1
     RETURNING ${NODE_COLUMNS}`,
    [...columnsOf(doc), version],
  );
  return nodeRowToRecord(rows[0]);
}

/** One node, or undefined. `forUpdate` locks the row until the transaction ends. */
export async function selectNode(q: Queryable, nodeId: string, forUpdate = false): Promise<NodeRecord | undefined> {
  const { rows } = await q.query<NodeRow>(`SELECT ${NODE_COLUMNS} FROM nodes WHERE node_id = $1${forUpdate ? ' FOR UPDATE' : ''}`, [nodeId]);
  return rows[0] ? nodeRowToRecord(rows[0]) : undefined;
}

export async function nodeExists(q: Queryable, nodeId: string): Promise<boolean> {
  const { rowCount } = await q.query('SELECT 1 FROM nodes WHERE node_id = $1', [nodeId]);
  return rowCount === 1;
}

export async function insertHistory(
  q: Queryable,
  entry: { nodeId: string; version: number; patch: Record<string, unknown> | null; doc: NodeDoc; changedBy: string | null },
): Promise<void> {
  await q.query(
    `INSERT INTO node_history (node_id, version, patch, doc, changed_by) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5)`,
    [entry.nodeId, entry.version, entry.patch === null ? null : JSON.stringify(entry.patch), JSON.stringify(entry.doc), entry.changedBy],
  );
}

/**
 * A page of a node's history in version order (`desc`: newest first). `afterVersion` is the last
 * version of the previous page. Fetches `limit + 1` rows so the caller can tell whether more follow.
 */
export async function selectHistory(
  q: Queryable,
  nodeId: string,
  opts: { order: 'asc' | 'desc'; afterVersion?: number; limit: number },
): Promise<HistoryRecord[]> {
  const params: unknown[] = [nodeId, opts.limit + 1];
  let keyset = '';
  if (opts.afterVersion !== undefined) {
    params.push(opts.afterVersion);
    keyset = ` AND version ${opts.order === 'desc' ? '<' : '>'} $3`;
  }
  const { rows } = await q.query<HistoryRow>(
    `SELECT version, patch, doc, changed_at, changed_by FROM node_history
     WHERE node_id = $1${keyset}
     ORDER BY version ${opts.order === 'desc' ? 'DESC' : 'ASC'}
     LIMIT $2`,
    params,
  );
  return rows.map(historyRowToRecord);
}

export interface NodeFilter {
  type?: string;
  status?: string;
  /** nodeId of the last item of the previous page. */
  afterNodeId?: string;
  /** Rows to return; the query fetches one more to detect a next page. */
  limit: number;
}

/** Nodes matching type and/or status, in bytewise nodeId order. */
export async function selectNodes(q: Queryable, filter: NodeFilter): Promise<NodeRecord[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.type !== undefined) {
    params.push(filter.type);
    where.push(`type = $${params.length}`);
  }
  if (filter.status !== undefined) {
    params.push(filter.status);
    where.push(`status = $${params.length}`);
  }
  if (filter.afterNodeId !== undefined) {
    params.push(filter.afterNodeId);
    where.push(`node_id COLLATE "C" > $${params.length}`);
  }
  params.push(filter.limit + 1);
  const { rows } = await q.query<NodeRow>(
    `SELECT ${NODE_COLUMNS} FROM nodes
     ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
     ORDER BY node_id COLLATE "C"
     LIMIT $${params.length}`,
    params,
  );
  return rows.map(nodeRowToRecord);
}

export interface NearbyQuery {
  lat: number;
  lon: number;
  radiusKm: number;
  box: BoundingBox;
  type?: string;
  /** (distanceKm, nodeId) of the last item of the previous page. */
  after?: [number, string];
  limit: number;
}

/** The SQL of `selectNearby`, separate so its plan can be inspected (tests, benchmarks). */
export function nearbyStatement(query: NearbyQuery): { text: string; values: unknown[] } {
  const [r1, r2 = r1] = query.box.lonRanges;
  const values: unknown[] = [query.lat, query.lon, query.radiusKm, query.box.latMin, query.box.latMax, r1[0], r1[1], r2[0], r2[1], query.limit + 1];
  const extra: string[] = [];
  if (query.type !== undefined) {
    values.push(query.type);
    extra.push(`AND type = $${values.length}`);
  }
  if (query.after) {
    values.push(query.after[0], query.after[1]);
    const d = `$${values.length - 1}::float8`;
    const id = `$${values.length}`;
    extra.push(`AND (distance_km > ${d} OR (distance_km = ${d} AND node_id COLLATE "C" > ${id}))`);
  }
  // The lat/lon BETWEENs are the index condition on nodes_lat_lon; the haversine decides.
  const text = `SELECT ${NODE_COLUMNS}, distance_km FROM (
       SELECT n.*, 2 * ${EARTH_RADIUS_KM} * asin(least(1, sqrt(
                power(sin(radians(n.lat - $1::float8) / 2), 2)
                + cos(radians($1::float8)) * cos(radians(n.lat)) * power(sin(radians(n.lon - $2::float8) / 2), 2)))) AS distance_km
       FROM nodes n
       WHERE n.lat BETWEEN $4 AND $5
         AND (n.lon BETWEEN $6 AND $7 OR n.lon BETWEEN $8 AND $9)
     ) c
     WHERE distance_km <= $3::float8 ${extra.join(' ')}
     ORDER BY distance_km, node_id COLLATE "C"
     LIMIT $10`;
  return { text, values };
}

/**
 * Nodes within `radiusKm` (great circle, haversine) nearest first, ties by nodeId. The bounding
 * box narrows the scan through the (lat, lon) index; the exact distance decides.
 */
export async function selectNearby(q: Queryable, query: NearbyQuery): Promise<(NodeRecord & { distanceKm: number })[]> {
  const { text, values } = nearbyStatement(query);
  const { rows } = await q.query<NodeRow & { distance_km: number }>(text, values);
  return rows.map((r) => ({ ...nodeRowToRecord(r), distanceKm: r.distance_km }));
}
