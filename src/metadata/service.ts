import { isDeepStrictEqual } from 'node:util';
import type { Logger } from 'pino';
import type { ValidateFunction } from 'ajv';
import { withTransaction, type Db } from '../db/pool.js';
import { badRequest, conflict, notFound, preconditionFailed, type ErrorDetail } from '../http/errors.js';
import { bodyAjv, toDetails } from '../http/validation.js';
import { cursorScope, decodeCursor, invalidCursor, page } from '../http/cursor.js';
import { isoUtc } from '../http/time.js';
import type { Metrics } from '../metrics/metrics.js';
import type { NodeRegistry } from './registry.js';
import { boundingBox } from './geo.js';
import { applyMergePatch, isJsonObject } from './merge-patch.js';
import { NodeInput, TECHNICAL_MAX_BYTES, type HistoryEntryView, type NearbyNodeView, type NodeDoc, type NodeView } from './schemas.js';
import * as store from './store.js';
import { timezoneCatalog, type TimezoneCatalog } from '../db/timezones.js';
import { nulPath } from '../http/json-depth.js';

/** A page of a list endpoint. */
export interface Page<T> {
  items: T[];
  /** Opaque cursor for the next page; null on the last page. */
  nextCursor: string | null;
}

/**
 * A parsed `If-Match` header: `'*'` (any existing version) or the versions it names.
 * Accepted forms per entry: `3`, `"3"`, `W/"3"`; entries separated by commas.
 */
export type IfMatch = '*' | number[];

const READ_ONLY_FIELDS = ['version', 'createdAt', 'updatedAt'] as const;

export interface MetadataDeps {
  db: Db;
  metrics: Metrics;
  nodes: NodeRegistry;
  logger: Logger;
}

/** Parses an If-Match header; undefined when absent, a 400 when it is not a list of versions. */
export function parseIfMatch(header: string | undefined): IfMatch | undefined {
  if (header === undefined) return undefined;
  const trimmed = header.trim();
  if (trimmed === '*') return '*';
  const versions: number[] = [];
  for (const part of trimmed.split(',')) {
    const m = /^\s*(?:W\/)?(?:"(\d{1,9})"|(\d{1,9}))\s*$/.exec(part);
    if (!m) {
      throw badRequest('If-Match must name versions: 3, "3" or W/"3" (comma-separated), or *', [{ path: '/headers/if-match', message: 'not a version' }], 'INVALID_IF_MATCH');
    }
    versions.push(Number(m[1] ?? m[2]));
  }
  return versions;
}

/** The strong ETag of a version, e.g. `"3"`. */
export function etagOf(version: number): string {
  return `"${version}"`;
}

function toView(r: store.NodeRecord): NodeView {
  return { ...r.doc, version: r.version, createdAt: isoUtc(r.createdAt), updatedAt: isoUtc(r.updatedAt) };
}

/** Node metadata rules: validation, versioning, merge patches, history, and the node queries. */
export class MetadataService {
  private readonly validateNode: ValidateFunction;
  private readonly timezones: TimezoneCatalog;

  constructor(private readonly deps: MetadataDeps) {
    this.validateNode = bodyAjv.compile(NodeInput as object);
    this.timezones = timezoneCatalog(deps.db.readPool);
  }

  /**
   * Checks a whole document against the node schema and the rules a schema cannot express,
   * applying defaults (timezone, telemetryIntervalSeconds). Throws a 400 listing every problem.
   */
  async validate(candidate: unknown): Promise<NodeDoc> {
    const doc = structuredClone(candidate);
    if (!this.validateNode(doc)) {
      const details = toDetails(this.validateNode.errors ?? []);
      throw badRequest(`invalid node: ${details[0]?.path ?? '/'} ${details[0]?.message ?? ''}`.trim(), details, 'VALIDATION_ERROR');
    }
    const node = doc as NodeDoc;
    const details: ErrorDetail[] = [];
    const nul = nulPath(node);
    if (nul !== null) details.push({ path: nul, message: 'must not contain NUL characters' });
    if (!(await this.timezones.isKnown(node.timezone))) {
      details.push({ path: '/timezone', message: `"${node.timezone}" is not an IANA time zone known to both Node and PostgreSQL` });
    }
    if (node.technical !== undefined && Buffer.byteLength(JSON.stringify(node.technical)) > TECHNICAL_MAX_BYTES) {
      details.push({ path: '/technical', message: `must be at most ${TECHNICAL_MAX_BYTES} bytes of JSON` });
    }
    if (details.length) throw badRequest(`invalid node: ${details[0].path} ${details[0].message}`, details, 'VALIDATION_ERROR');
    return node;
  }

  /** Creates a node at version 1 (and its first history entry). 409 when the nodeId exists. */
  async create(input: unknown, changedBy: string | null = null): Promise<NodeView> {
    const doc = await this.validate(input);
    const record = await this.deps.metrics.timeStore('metadata', 'create', () =>
      withTransaction(this.deps.db.pool, async (c) => {
        let inserted: store.NodeRecord;
        try {
          inserted = await store.insertNode(c, doc);
        } catch (err) {
          if ((err as { code?: unknown }).code === '23505') throw conflict(`node "${doc.nodeId}" already exists`, 'NODE_EXISTS');
          throw err;
        }
        await store.insertHistory(c, { nodeId: doc.nodeId, version: 1, patch: null, doc, changedBy });
        return inserted;
      }),
    );
    await this.announce(doc.nodeId);
    return toView(record);
  }

  async find(nodeId: string): Promise<NodeView | undefined> {
    // The primary pool, not the replica: a client that just wrote must read its version back (ETag, If-Match).
    const r = await this.deps.metrics.timeStore('metadata', 'get', () => store.selectNode(this.deps.db.pool, nodeId));
    return r && toView(r);
  }

  async get(nodeId: string): Promise<NodeView> {
    const node = await this.find(nodeId);
    if (!node) throw notFound(`node "${nodeId}" not found`, 'NODE_NOT_FOUND');
    return node;
  }

  /**
   * Applies an RFC 7396 merge patch. The nodeId cannot change and read-only fields cannot be
   * sent; the merged document must validate. With `ifMatch`, the current version must be one
   * of those named (412 otherwise). A patch that changes nothing keeps the version and adds no
   * history entry.
   */
  async patch(nodeId: string, patch: unknown, ifMatch: IfMatch | undefined, changedBy: string | null = null): Promise<NodeView> {
    if (!isJsonObject(patch)) {
      throw badRequest('a merge patch of a node must be a JSON object', [{ path: '/', message: 'must be object' }], 'VALIDATION_ERROR');
    }
    const details: ErrorDetail[] = [];
    if ('nodeId' in patch && patch.nodeId !== nodeId) details.push({ path: '/nodeId', message: 'is immutable' });
    for (const f of READ_ONLY_FIELDS) if (f in patch) details.push({ path: `/${f}`, message: 'is read-only (send If-Match to name the version you patch)' });
    if (details.length) throw badRequest(`${details[0].path.slice(1)} ${details[0].message}`, details, 'VALIDATION_ERROR');

    const result = await this.deps.metrics.timeStore('metadata', 'patch', () =>
      withTransaction(this.deps.db.pool, async (c) => {
        const current = await store.selectNode(c, nodeId, true);
        if (!current) throw notFound(`node "${nodeId}" not found`, 'NODE_NOT_FOUND');
        if (ifMatch !== undefined && ifMatch !== '*' && !ifMatch.includes(current.version)) {
          throw preconditionFailed(`node "${nodeId}" is at version ${current.version}, not ${ifMatch.join(', ')}`);
        }
        const merged = await this.validate(applyMergePatch(current.doc, patch));
        if (isDeepStrictEqual(merged, current.doc)) return { record: current, changed: false };
        const version = current.version + 1;
        const record = await store.updateNode(c, merged, version);
        await store.insertHistory(c, { nodeId, version, patch, doc: merged, changedBy });
        return { record, changed: true };
      }),
    );
    if (result.changed) await this.announce(nodeId);
    return toView(result.record);
  }

  /** A node's versions, newest first (`desc`, the default) or oldest first. 404 for an unknown node. */
  async history(nodeId: string, opts: { order?: 'asc' | 'desc'; limit: number; cursor?: string }): Promise<Page<HistoryEntryView>> {
    const order = opts.order ?? 'desc';
    const scope = cursorScope('history', nodeId, order);
    const after = decodeCursor(opts.cursor, 1, scope);
    if (after && typeof after[0] !== 'number') throw invalidCursor();
    const rows = await this.deps.metrics.timeStore('metadata', 'history', async () => {
      const q = this.deps.db.readPool;
      const list = await store.selectHistory(q, nodeId, { order, afterVersion: after?.[0] as number | undefined, limit: opts.limit });
      if (list.length === 0 && !(await store.nodeExists(q, nodeId))) throw notFound(`node "${nodeId}" not found`, 'NODE_NOT_FOUND');
      return list;
    });
    const p = page(rows, opts.limit, scope, (r) => [r.version]);
    return {
      nextCursor: p.nextCursor,
      items: p.items.map((r) => ({
        version: r.version,
        kind: r.patch === null ? 'create' : 'patch',
        changedAt: isoUtc(r.changedAt),
        changedBy: r.changedBy,
        patch: r.patch,
        node: r.doc,
      })),
    };
  }

  /** Active nodes, optionally of one type, in bytewise nodeId order. */
  async active(opts: { type?: string; limit: number; cursor?: string }): Promise<Page<NodeView>> {
    return this.list('active', { type: opts.type, status: 'active', limit: opts.limit, cursor: opts.cursor });
  }

  /** Nodes of one type, optionally of one status, in bytewise nodeId order. */
  async byType(opts: { type: string; status?: string; limit: number; cursor?: string }): Promise<Page<NodeView>> {
    return this.list('by_type', opts);
  }

  private async list(action: string, opts: { type?: string; status?: string; limit: number; cursor?: string }): Promise<Page<NodeView>> {
    const scope = cursorScope('nodes', action, opts.type, opts.status);
    const after = decodeCursor(opts.cursor, 1, scope);
    if (after && typeof after[0] !== 'string') throw invalidCursor();
    const rows = await this.deps.metrics.timeStore('metadata', action, () =>
      store.selectNodes(this.deps.db.readPool, { type: opts.type, status: opts.status, afterNodeId: after?.[0] as string | undefined, limit: opts.limit }),
    );
    const p = page(rows, opts.limit, scope, (r) => [r.doc.nodeId]);
    return { items: p.items.map(toView), nextCursor: p.nextCursor };
  }

  /**
   * Nodes within `radiusKm` of (lat, lon) by great-circle distance, nearest first (ties by
   * nodeId), each with `distanceKm`. Nodes without a location never match.
   */
  async nearby(opts: { lat: number; lon: number; radiusKm: number; type?: string; limit: number; cursor?: string }): Promise<Page<NearbyNodeView>> {
    // The cursor belongs to the point of origin and type (its distances are from that point); radiusKm may change between pages.
    const scope = cursorScope('nearby', opts.lat, opts.lon, opts.type);
    const after = decodeCursor(opts.cursor, 2, scope);
    if (after && (typeof after[0] !== 'number' || typeof after[1] !== 'string')) throw invalidCursor();
    const box = boundingBox(opts.lat, opts.lon, opts.radiusKm);
    const rows = await this.deps.metrics.timeStore('metadata', 'nearby', () =>
      store.selectNearby(this.deps.db.readPool, {
        lat: opts.lat,
        lon: opts.lon,
        radiusKm: opts.radiusKm,
        box,
        type: opts.type,
        after: after as [number, string] | undefined,
        limit: opts.limit,
      }),
    );
    const p = page(rows, opts.limit, scope, (r) => [r.distanceKm, r.doc.nodeId]);
    return { items: p.items.map((r) => ({ ...toView(r), distanceKm: r.distanceKm })), nextCursor: p.nextCursor };
  }

  /** Tells the registry (here and, via pub/sub, on every instance); the write is committed, so a failure only delays other instances. */
  private async announce(nodeId: string): Promise<void> {
    try {
      await this.deps.nodes.announce(nodeId);
    } catch (err) {
      this.deps.logger.warn({ err, nodeId }, 'could not announce a metadata change; registries catch up on their periodic refresh');
    }
  }
}
