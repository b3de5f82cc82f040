import type { FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { Cursor, Limit, NodeId, StringEnum, TimeQuery, errorResponses } from '../http/schemas.js';
import { FILLS, INTERVALS, type HistoricalInput, type TelemetryQueryService } from './query-service.js';

export const HistoricalQuery = Type.Object(
  {
    from: TimeQuery,
    to: TimeQuery,
    interval: Type.Optional(StringEnum(INTERVALS, { description: 'bucket width; default chosen from the range (docs/telemetry-queries.md)' })),
    fields: Type.Optional(Type.String({ maxLength: 400, description: 'comma list of numeric reading fields (default powerKw)' })),
    agg: Type.Optional(Type.String({ maxLength: 200, description: 'comma list of avg, min, max, sum, count, first, last, twa (default avg,min,max)' })),
    tz: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'IANA time zone of bucket alignment and output times (default UTC)' })),
    fill: Type.Optional(StringEnum(FILLS, { description: 'empty buckets: none (omitted, default), null, previous, linear' })),
    maxGap: Type.Optional(Type.Integer({ minimum: 0, maximum: 63_244_800, description: 'seconds; previous/linear never fill across a longer gap between readings (default 3 × telemetryIntervalSeconds)' })),
    format: Type.Optional(StringEnum(['json', 'csv'] as const)),
    limit: Type.Optional(Limit),
    cursor: Type.Optional(Cursor),
  },
  { additionalProperties: false },
);

const HistoricalResponse = Type.Object(
  {
    nodeId: Type.String(),
    from: Type.String(),
    to: Type.String(),
    interval: Type.String(),
    tz: Type.String(),
    buckets: Type.Optional(Type.Array(Type.Object({ start: Type.String(), count: Type.Integer(), filled: Type.Optional(Type.Boolean()) }, { additionalProperties: true }))),
    items: Type.Optional(Type.Array(Type.Object({ timestamp: Type.String() }, { additionalProperties: true }))),
    nextCursor: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  },
  { additionalProperties: true },
);

/** `GET /api/telemetry/:nodeId/historical`. */
export function telemetryQueryRoutes(service: TelemetryQueryService): FastifyPluginAsync {
  return async (root) => {
    const app = root.withTypeProvider<TypeBoxTypeProvider>();
    app.get(
      '/api/telemetry/:nodeId/historical',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['telemetry'],
          summary: 'bucketed aggregates (or raw readings) over a time range, from the coarsest exact rollup tier',
          params: Type.Object({ nodeId: NodeId }),
          querystring: HistoricalQuery,
          response: {
            200: {
              description: 'buckets or a page of raw readings, as JSON (default) or CSV (`format=csv` or `Accept: text/csv`)',
              headers: {
                'X-Rollup-Tier': { type: 'string', description: 'the coarsest source the answer was computed from: raw, or a rollup tier (15m, 1h, 2h, 4h, 8h, 1d)' },
                'X-Rollup-Sources': { type: 'string', description: 'every source that contributed, coarsest first, comma-separated' },
                'X-Next-Cursor': { type: 'string', description: 'CSV pages of interval=raw: the cursor of the next page (JSON carries it as nextCursor)' },
              },
              content: { 'application/json': { schema: HistoricalResponse }, 'text/csv': { schema: { type: 'string' } } },
            },
            ...errorResponses,
          },
        },
      },
      async (req, reply) => {
        const q = req.query as Omit<HistoricalInput, 'nodeId' | 'accept'>;
        const answer = await service.historical({ ...q, nodeId: req.params.nodeId, accept: req.headers.accept });
        void reply.header('X-Rollup-Tier', answer.tier);
        void reply.header('X-Rollup-Sources', answer.sources.join(','));
        if (answer.format === 'csv') {
          if (answer.nextCursor) void reply.header('X-Next-Cursor', answer.nextCursor);
          return reply.type('text/csv; charset=utf-8').send(answer.body as never);
        }
        // Bucketed answers come as JSON text already (see bucketsJson); Fastify sends a string
        // with a JSON content type as it is.
        if (typeof answer.body === 'string') return reply.type('application/json; charset=utf-8').send(answer.body as never);
        return reply.send(answer.body as never);
      },
    );
  };
}
