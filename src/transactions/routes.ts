import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static, type TSchema } from 'typebox';
import { cursorScope, decodeCursor, invalidCursor, page } from '../http/cursor.js';
import { notFound } from '../http/errors.js';
import { Cursor, Limit, NodeId, StringEnum, TimeInput, TimeQuery, bodyErrorResponses, errorResponses } from '../http/schemas.js';
import { requireTime } from '../http/time.js';
import { TRANSACTION_STATUSES, TRANSACTION_TYPES, type TransactionRecord, type TransactionType } from './canonical.js';
import type { TransactionsService } from './service.js';
import { depthLimited } from '../http/json-depth.js';

/** A type that also admits null, as OpenAPI 3.0's `nullable` (understood by Ajv and the response serialiser too). */
function Nullable<T extends TSchema>(schema: T) {
  return Type.Unsafe<Static<T> | null>({ ...(schema as unknown as Record<string, unknown>), nullable: true });
}

const Amount = (description: string) => Type.Number({ minimum: -1e12, maximum: 1e12, description });
const Hex64 = Type.String({ pattern: '^[0-9a-f]{64}$', description: 'SHA-256, 64 lowercase hex characters' });
const Uuid = Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$', description: 'UUID' });
const PRINTABLE_KEY = '^[!-~]{1,128}$';

export const CreateTransactionSchema = Type.Object(
  {
    transactionId: Type.Optional(Type.String({ pattern: PRINTABLE_KEY, description: 'client-chosen idempotency key: 1–128 printable ASCII characters, no spaces' })),
    nodeId: NodeId,
    type: StringEnum(TRANSACTION_TYPES),
    timestamp: TimeInput,
    market: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[^\\u0000-\\u001f\\u007f]+$', description: 'free text, e.g. day_ahead, intraday, FCR, aFRR, mFRR, capacity (1–64 characters, no control characters)' })),
    energyKwh: Type.Optional(Amount('energy, kWh (signed)')),
    powerKw: Type.Optional(Amount('power, kW (signed)')),
    priceEurMwh: Type.Optional(Amount('price, EUR/MWh (may be negative)')),
    amountEur: Type.Optional(Amount('amount, EUR (signed); must equal energyKwh × priceEurMwh / 1000 within 0.01 when all three are given')),
    status: StringEnum(TRANSACTION_STATUSES),
    relatesTo: Type.Optional(Type.String({ pattern: PRINTABLE_KEY, description: 'id (or transactionId) of an earlier record of the same node' })),
    details: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'free-form object, at most 16 KiB of JSON' })),
  },
  { additionalProperties: false },
);

export const TransactionRecordSchema = Type.Object(
  {
    id: Uuid,
    sequence: Type.Integer({ minimum: 1, description: 'position in the log, gap-free' }),
    transactionId: Nullable(Type.String()),
    nodeId: Type.String(),
    type: StringEnum(TRANSACTION_TYPES),
    timestamp: Type.String({ description: 'RFC 3339 UTC with milliseconds' }),
    market: Nullable(Type.String()),
    energyKwh: Nullable(Type.Number()),
    powerKw: Nullable(Type.Number()),
    priceEurMwh: Nullable(Type.Number()),
    amountEur: Nullable(Type.Number()),
    status: StringEnum(TRANSACTION_STATUSES),
    relatesTo: Nullable(Type.String({ description: 'id of the earlier record' })),
    details: Type.Unknown({ description: 'object or null' }),
    recordedAt: Type.String({ description: 'when the log acknowledged the record, RFC 3339 UTC with milliseconds' }),
    prevHash: Hex64,
    hash: Hex64,
  },
  { description: 'a record of the log, exactly the fields that are hashed plus prevHash and hash' },
);

const AnchorSchema = Type.Object({
  anchorId: Uuid,
  merkleRoot: Hex64,
  fromSequence: Type.Integer(),
  toSequence: Type.Integer(),
  leafCount: Type.Integer(),
  createdAt: Type.String(),
  network: Nullable(Type.String()),
  txHash: Nullable(Type.String()),
  blockNumber: Nullable(Type.Integer()),
  chainRecordedAt: Nullable(Type.String()),
});

const VerifyResponse = Type.Object({
  ok: Type.Boolean(),
  checked: Type.Integer({ description: 'records found intact' }),
  fromSequence: Type.Integer(),
  toSequence: Type.Integer(),
  anchorsChecked: Type.Integer({ description: 'anchors wholly inside the range whose Merkle root was recomputed' }),
  checkpoint: Type.Optional(Type.Object({ sequence: Type.Integer(), hash: Hex64 })),
  firstBrokenSequence: Type.Optional(Type.Integer()),
  reason: Type.Optional(Type.String()),
});

const ProofResponse = Type.Object({
  record: TransactionRecordSchema,
  proof: Type.Object({
    leafHash: Hex64,
    leafIndex: Type.Integer(),
    leafCount: Type.Integer(),
    siblings: Type.Array(Type.Object({ position: StringEnum(['left', 'right'] as const), hash: Hex64 })),
  }),
  anchor: AnchorSchema,
  algorithm: Type.Record(Type.String(), Type.String()),
});

const ListQuery = Type.Object(
  {
    type: Type.Optional(StringEnum(TRANSACTION_TYPES)),
    from: Type.Optional(TimeQuery),
    to: Type.Optional(TimeQuery),
    limit: Type.Optional(Limit),
    cursor: Type.Optional(Cursor),
  },
  { additionalProperties: false },
);
const ListResponse = Type.Object({ items: Type.Array(TransactionRecordSchema), nextCursor: Nullable(Type.String()) });

const tags = ['transactions'];

export function transactionsRoutes(service: TransactionsService): FastifyPluginAsyncTypebox {
  return async (app) => {
    // Scoped to these routes: an empty body sent with `Content-Type: application/json` counts as
    // no body (so a bare "close the batch" POST works from any client); anything else goes to
    // Fastify's own parser with its prototype-poisoning protections.
    const json = depthLimited(app.getDefaultJsonParser('error', 'error'));
    app.removeContentTypeParser('application/json');
    app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
      if (typeof body === 'string' && body.trim() === '') done(null, undefined);
      else json(req, String(body), done);
    });

    app.post(
      '/api/transactions',
      {
        config: { scope: 'transactions:write' },
        schema: {
          tags,
          summary: 'append a record (idempotent on transactionId)',
          body: CreateTransactionSchema,
          response: { 200: TransactionRecordSchema, 201: TransactionRecordSchema, 409: errorResponses[400], ...bodyErrorResponses },
        },
      },
      async (req, reply) => {
        const r = await service.append(req.body as never);
        return reply.code(r.created ? 201 : 200).send(r.record);
      },
    );

    // Static segments win over `/:nodeId` in Fastify's router, so these are never read as node ids
    // (a node literally named "verify" or "anchors" is listed through GET /api/transactions?nodeId=).
    app.get(
      '/api/transactions/verify',
      {
        config: { scope: 'read' },
        schema: {
          tags,
          summary: 'recompute the hash chain over a sequence range',
          querystring: Type.Object(
            { fromSequence: Type.Optional(Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })), toSequence: Type.Optional(Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })) },
            { additionalProperties: false },
          ),
          response: { 200: VerifyResponse, ...errorResponses },
        },
      },
      async (req) => service.verify(req.query),
    );

    app.get(
      '/api/transactions/anchors',
      {
        config: { scope: 'read' },
        schema: {
          tags,
          summary: 'anchors, newest first',
          querystring: Type.Object({ limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) }, { additionalProperties: false }),
          response: { 200: Type.Object({ items: Type.Array(AnchorSchema), nextCursor: Nullable(Type.String()) }), ...errorResponses },
        },
      },
      async (req) => {
        const limit = req.query.limit ?? 100;
        const after = decodeCursor(req.query.cursor, 1, 'anchors');
        const rows = await service.listAnchors(limit, after ? cursorNumber(after[0]) : undefined);
        return page(rows, limit, 'anchors', (a) => [a.fromSequence]);
      },
    );

    app.post(
      '/api/transactions/anchors',
      {
        config: { scope: 'admin' },
        schema: {
          tags,
          summary: 'close the batch of records since the last anchor into a Merkle tree',
          body: Type.Optional(Type.Object({ toSequence: Type.Optional(Type.Integer({ minimum: 1 })) }, { additionalProperties: false })),
          response: { 201: AnchorSchema, 409: errorResponses[400], ...bodyErrorResponses },
        },
        // The body is optional: a bare POST closes the batch up to the head.
        preValidation: async (req) => {
          if (req.body === undefined || req.body === null) req.body = {};
        },
      },
      async (req, reply) => {
        const body = (req.body ?? {}) as { toSequence?: number };
        return reply.code(201).send(await service.createAnchor({ toSequence: body.toSequence }));
      },
    );

    app.get(
      '/api/transactions/anchors/:anchorId',
      {
        config: { scope: 'read' },
        schema: { tags, summary: 'one anchor', params: Type.Object({ anchorId: Uuid }), response: { 200: AnchorSchema, ...errorResponses } },
      },
      async (req) => {
        const a = await service.getAnchor(req.params.anchorId.toLowerCase());
        if (!a) throw notFound(`no anchor ${req.params.anchorId}`, 'ANCHOR_NOT_FOUND');
        return a;
      },
    );

    app.patch(
      '/api/transactions/anchors/:anchorId',
      {
        config: { scope: 'admin' },
        schema: {
          tags,
          summary: 'record where the anchor root was put on chain (once)',
          params: Type.Object({ anchorId: Uuid }),
          body: Type.Object(
            {
              network: Type.String({ minLength: 1, maxLength: 64, pattern: '^[!-~]+$', description: 'chain name, e.g. ethereum-mainnet' }),
              txHash: Type.String({ minLength: 1, maxLength: 256, pattern: '^[!-~]+$', description: 'transaction hash on that chain' }),
              blockNumber: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
            },
            { additionalProperties: false },
          ),
          response: { 200: AnchorSchema, 409: errorResponses[400], ...bodyErrorResponses },
        },
      },
      async (req) => service.recordAnchorChain(req.params.anchorId.toLowerCase(), req.body),
    );

    app.get(
      '/api/transactions/:id/proof',
      {
        config: { scope: 'read' },
        schema: {
          tags,
          summary: "a record's Merkle inclusion proof and its anchor",
          params: Type.Object({ id: Uuid }),
          response: { 200: ProofResponse, ...errorResponses },
        },
      },
      async (req) => service.proof(req.params.id.toLowerCase()),
    );

    const list = async (nodeId: string, q: { type?: TransactionType; from?: string; to?: string; limit?: number; cursor?: string }) => {
      const limit = q.limit ?? 100;
      const from = q.from === undefined ? undefined : requireTime(q.from, '/from');
      const to = q.to === undefined ? undefined : requireTime(q.to, '/to');
      // The cursor belongs to the node and type; from/to may move between pages.
      const scope = cursorScope('transactions', nodeId, q.type);
      const c = decodeCursor(q.cursor, 2, scope);
      const rows = await service.list({ nodeId, type: q.type, from, to, limit, after: c ? [cursorNumber(c[0]), cursorNumber(c[1])] : undefined });
      return page(rows, limit, scope, (r: TransactionRecord) => [Date.parse(r.timestamp), r.sequence]);
    };

    app.get(
      '/api/transactions/:nodeId',
      {
        config: { scope: 'read' },
        schema: { tags, summary: "a node's records, newest first", params: Type.Object({ nodeId: NodeId }), querystring: ListQuery, response: { 200: ListResponse, ...errorResponses } },
      },
      async (req) => list(req.params.nodeId, req.query),
    );

    app.get(
      '/api/transactions',
      {
        config: { scope: 'read' },
        schema: {
          tags,
          summary: "a node's records, newest first (query form; also reaches nodes named like a static route)",
          querystring: Type.Object({ ...ListQuery.properties, nodeId: NodeId }, { additionalProperties: false }),
          response: { 200: ListResponse, ...errorResponses },
        },
      },
      async (req) => list(req.query.nodeId, req.query),
    );
  };
}

function cursorNumber(v: string | number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
    throw invalidCursor();
  }
  return v;
}
