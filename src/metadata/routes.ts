import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { Cursor, ErrorResponse, Limit, NodeId, Paginated, StringEnum, bodyErrorResponses, errorResponses } from '../http/schemas.js';
import { etagOf, parseIfMatch, type MetadataService } from './service.js';
import { HistoryEntryView, NearbyNodeView, NodeInput, NodeStatusSchema, NodeTypeSchema, NodeView } from './schemas.js';
import { depthLimited } from '../http/json-depth.js';

/** Node documents are small; anything near this is a mistake (413 above it). */
const BODY_LIMIT_BYTES = 64 * 1024;

const NodeParams = Type.Object({ nodeId: NodeId });
// A misspelt query parameter (`?stauts=active`) would otherwise be ignored and return the wrong list.
const STRICT = { additionalProperties: false } as const;
const MergePatch = Type.Object({}, { additionalProperties: true, description: 'RFC 7396 JSON merge patch of the node (application/merge-patch+json or application/json)' });

function changedBy(req: FastifyRequest): string | null {
  return req.apiKeyId ? `key:${req.apiKeyId.slice(0, 12)}` : null;
}

/** A node answer as documented: the node as JSON, with its version as ETag (and, when created, its Location). */
const nodeAnswer = (description: string, location = false) => ({
  description,
  headers: {
    ETag: { type: 'string', description: 'the node\'s version, quoted ("3"); send it back in If-Match / If-None-Match' },
    ...(location ? { Location: { type: 'string', description: 'the new node\'s URL' } } : {}),
  },
  content: { 'application/json': { schema: NodeView } },
});

export function metadataRoutes(service: MetadataService): FastifyPluginAsyncTypebox {
  return async (app) => {
    // RFC 7396's media type, parsed like JSON (same proto-poisoning protection and errors).
    app.addContentTypeParser('application/merge-patch+json', { parseAs: 'string' }, depthLimited(app.getDefaultJsonParser('error', 'error')));

    const write = { scope: 'metadata:write' } as const;
    const read = { scope: 'read' } as const;

    app.post(
      '/api/metadata',
      {
        bodyLimit: BODY_LIMIT_BYTES,
        config: write,
        schema: {
          tags: ['metadata'],
          summary: 'create a node',
          body: NodeInput,
          response: { 201: nodeAnswer('the node created', true), ...bodyErrorResponses, 409: ErrorResponse },
        },
      },
      async (req, reply) => {
        const node = await service.create(req.body, changedBy(req));
        void reply.code(201).header('etag', etagOf(node.version)).header('location', `/api/metadata/${encodeURIComponent(node.nodeId)}`);
        return node;
      },
    );

    app.get(
      '/api/metadata/:nodeId',
      {
        config: read,
        schema: {
          tags: ['metadata'],
          summary: 'read a node (ETag = version; If-None-Match gives 304)',
          params: NodeParams,
          response: { 200: nodeAnswer('the node'), 304: Type.Null({ description: 'not modified (If-None-Match matched its ETag)' }), ...errorResponses },
        },
      },
      async (req, reply) => {
        const node = await service.get(req.params.nodeId);
        const etag = etagOf(node.version);
        void reply.header('etag', etag);
        const inm = req.headers['if-none-match'];
        if (typeof inm === 'string' && inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag || t.trim() === '*')) {
          return reply.code(304).send(null);
        }
        return node;
      },
    );

    app.patch(
      '/api/metadata/:nodeId',
      {
        bodyLimit: BODY_LIMIT_BYTES,
        config: write,
        schema: {
          tags: ['metadata'],
          summary: 'merge-patch a node (RFC 7396); If-Match: <version> guards against lost updates',
          params: NodeParams,
          headers: Type.Object({ 'if-match': Type.Optional(Type.String({ description: '3, "3" or W/"3"; 412 when the node is at another version' })) }),
          // Documented media types of the body (OpenAPI only; both are parsed, as JSON).
          consumes: ['application/merge-patch+json', 'application/json'],
          body: MergePatch,
          response: { 200: nodeAnswer('the node after the patch'), ...bodyErrorResponses, 412: ErrorResponse },
        },
      },
      async (req, reply) => {
        const ifMatch = parseIfMatch(req.headers['if-match']);
        const node = await service.patch(req.params.nodeId, req.body, ifMatch, changedBy(req));
        void reply.header('etag', etagOf(node.version));
        return node;
      },
    );

    app.get(
      '/api/metadata/:nodeId/history',
      {
        config: read,
        schema: {
          tags: ['metadata'],
          summary: "a node's versions, newest first unless order=asc",
          params: NodeParams,
          querystring: Type.Object({
            order: Type.Optional(StringEnum(['desc', 'asc'] as const, { default: 'desc', description: 'desc: newest first (default); asc: oldest first' })),
            limit: Type.Optional(Limit),
            cursor: Type.Optional(Cursor),
          }, STRICT),
          response: { 200: Paginated(HistoryEntryView), ...errorResponses },
        },
      },
      async (req) => service.history(req.params.nodeId, { order: req.query.order, limit: req.query.limit ?? 100, cursor: req.query.cursor }),
    );

    app.get(
      '/api/nodes/active',
      {
        config: read,
        schema: {
          tags: ['nodes'],
          summary: 'active nodes, in nodeId order',
          querystring: Type.Object({ type: Type.Optional(NodeTypeSchema), limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) }, STRICT),
          response: { 200: Paginated(NodeView), ...errorResponses },
        },
      },
      async (req) => service.active({ type: req.query.type, limit: req.query.limit ?? 100, cursor: req.query.cursor }),
    );

    app.get(
      '/api/nodes/by-type/:type',
      {
        config: read,
        schema: {
          tags: ['nodes'],
          summary: 'nodes of one technology type, in nodeId order',
          params: Type.Object({ type: NodeTypeSchema }),
          querystring: Type.Object({ status: Type.Optional(NodeStatusSchema), limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) }, STRICT),
          response: { 200: Paginated(NodeView), ...errorResponses },
        },
      },
      async (req) => service.byType({ type: req.params.type, status: req.query.status, limit: req.query.limit ?? 100, cursor: req.query.cursor }),
    );

    app.get(
      '/api/nodes/nearby',
      {
        config: read,
        schema: {
          tags: ['nodes'],
          summary: 'nodes within radiusKm (great circle), nearest first',
          querystring: Type.Object({
            lat: Type.Number({ minimum: -90, maximum: 90, description: 'degrees' }),
            lon: Type.Number({ minimum: -180, maximum: 180, description: 'degrees' }),
            radiusKm: Type.Number({ minimum: 0, maximum: 20000, description: 'km, 0..20000' }),
            type: Type.Optional(NodeTypeSchema),
            limit: Type.Optional(Limit),
            cursor: Type.Optional(Cursor),
          }, STRICT),
          response: { 200: Paginated(NearbyNodeView), ...errorResponses },
        },
      },
      async (req) =>
        service.nearby({
          lat: req.query.lat,
          lon: req.query.lon,
          radiusKm: req.query.radiusKm,
          type: req.query.type,
          limit: req.query.limit ?? 100,
          cursor: req.query.cursor,
        }),
    );
  };
}
