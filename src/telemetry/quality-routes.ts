import type { FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { badRequest } from '../http/errors.js';
import { NodeId, errorResponses } from '../http/schemas.js';
import { requireTime, TIME_TEXT_MAX } from '../http/time.js';
import type { DataQualityService } from './quality-service.js';

/** Longest range one report covers (ms): a leap year. */
export const QUALITY_MAX_RANGE_MS = 366 * 86_400_000;
/** Range used when `from` is not given: the 24 hours before `to`. */
const DEFAULT_RANGE_MS = 86_400_000;

const Time = Type.String({ description: 'RFC 3339 UTC' });

export const DataQualityParams = Type.Object({ nodeId: NodeId });
export const DataQualityQuery = Type.Object({
  from: Type.Optional(Type.String({ minLength: 1, maxLength: TIME_TEXT_MAX, description: 'RFC 3339 or epoch ms; range start, inclusive (default: 24 h before to)' })),
  to: Type.Optional(Type.String({ minLength: 1, maxLength: TIME_TEXT_MAX, description: 'RFC 3339 or epoch ms; range end, exclusive (default: now)' })),
});
export const DataQualityResponse = Type.Object(
  {
    nodeId: Type.String(),
    from: Time,
    to: Time,
    intervalSeconds: Type.Number({ description: "the node's telemetryIntervalSeconds" }),
    expected: Type.Integer({ description: 'interval-aligned reading slots in [from, min(to, now))' }),
    received: Type.Integer({ description: 'distinct readings stored in [from, to)' }),
    completenessPct: Type.Number({ minimum: 0, maximum: 100 }),
    duplicates: Type.Integer({ description: 'identical re-sends, over the UTC days the range touches' }),
    corrected: Type.Integer({ description: 're-sends with changed values, over the UTC days the range touches' }),
    outOfRange: Type.Integer(),
    late: Type.Integer(),
    gaps: Type.Array(Type.Object({ start: Time, end: Time, missing: Type.Integer({ minimum: 0 }) })),
    gapCount: Type.Integer({ description: 'all gaps in the range; gaps lists the first 1000' }),
    lastReadingAt: Type.Union([Time, Type.Null()]),
    stale: Type.Boolean(),
    score: Type.Integer({ minimum: 0, maximum: 100 }),
  },
  { description: 'data quality of one node over [from, to)' },
);

/** GET /api/data-quality/:nodeId. */
export function qualityRoutes(service: DataQualityService): FastifyPluginAsync {
  return async (fastify) => {
    const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
    app.get(
      '/api/data-quality/:nodeId',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['telemetry'],
          summary: "A node's data quality over a time range",
          params: DataQualityParams,
          querystring: DataQualityQuery,
          response: { 200: DataQualityResponse, ...errorResponses },
        },
      },
      async (req) => {
        const now = Date.now();
        const to = req.query.to === undefined ? now : requireTime(req.query.to, '/to');
        const from = req.query.from === undefined ? to - DEFAULT_RANGE_MS : requireTime(req.query.from, '/from');
        if (from >= to) throw badRequest('from must be before to', [{ path: '/from', message: 'must be before to', in: 'querystring' }], 'INVALID_RANGE');
        if (to - from > QUALITY_MAX_RANGE_MS) {
          throw badRequest('the range may span at most 366 days', [{ path: '/to', message: 'to - from exceeds 366 days', in: 'querystring' }], 'RANGE_TOO_LARGE');
        }
        return service.report(req.params.nodeId, from, to, now);
      },
    );
  };
}
