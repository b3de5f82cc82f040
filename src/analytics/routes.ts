import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static, type TSchema } from 'typebox';
import { NodeId, errorResponses } from '../http/schemas.js';
import type { AnalyticsService } from './service.js';

function Nullable<T extends TSchema>(schema: T) {
  const s = schema as unknown as Record<string, unknown>;
  return Type.Unsafe<Static<T> | null>({ ...s, type: [s.type, 'null'] });
}

const DateParam = (what: string) => Type.String({ minLength: 1, maxLength: 40, description: what });
const Tz = Type.String({ minLength: 1, maxLength: 64, description: 'IANA time zone of the local calendar (default: the node\'s timezone)' });

const PeriodQuery = (unit: string) =>
  Type.Object(
    {
      from: DateParam(`first ${unit}, included`),
      to: DateParam(`last ${unit}, included`),
      tz: Type.Optional(Tz),
    },
    { additionalProperties: false },
  );

const Row = Type.Object({
  date: Type.String({ description: 'local date YYYY-MM-DD (daily) or month YYYY-MM (monthly)' }),
  start: Type.String({ description: 'period start in tz, RFC 3339' }),
  end: Type.String({ description: 'period end (exclusive) in tz, RFC 3339' }),
  hours: Type.Number({ description: 'real length of the local period, h (23/24/25 on DST days)' }),
  energyExportedKwh: Type.Number(),
  energyImportedKwh: Type.Number(),
  avgPowerKw: Nullable(Type.Number()),
  peakPowerKw: Nullable(Type.Number()),
  minPowerKw: Nullable(Type.Number()),
  capacityFactor: Type.Number({ description: 'exported kWh / (capacityKw × hours)' }),
  availabilityPct: Type.Number({ description: '100 × available seconds / period seconds' }),
  completenessPct: Type.Number({ description: 'min(100, 100 × readings / expected); monthly: time-weighted mean of days' }),
  readingCount: Type.Integer(),
  expectedReadings: Type.Number(),
  dispatchCount: Type.Integer(),
  revenueEur: Type.Number(),
  costEur: Type.Number(),
});

const Header = {
  nodeId: Type.String(),
  tz: Type.String(),
  from: Type.String(),
  to: Type.String(),
  capacityKw: Type.Number(),
  telemetryIntervalSeconds: Type.Number(),
};

const Figure = Type.Object({ value: Type.Number(), p25: Type.Number(), median: Type.Number(), p75: Type.Number(), percentileRank: Type.Number() });
const Portfolio = Type.Object({
  nodes: Type.Integer(),
  capacityKw: Type.Number(),
  energyExportedKwh: Type.Number(),
  energyImportedKwh: Type.Number(),
  revenueEur: Type.Number(),
  costEur: Type.Number(),
  dispatchCount: Type.Integer(),
  avgCapacityFactor: Type.Number(),
  fleetCapacityFactor: Type.Number(),
  avgAvailabilityPct: Type.Number(),
  avgCompletenessPct: Type.Number(),
});

/** `GET /api/analytics/...`: daily, monthly, benchmarks, portfolio (docs/analytics.md). */
export function analyticsRoutes(service: AnalyticsService): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get(
      '/api/analytics/:nodeId/daily',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['analytics'],
          summary: 'per local day of the node (or tz): energy, power, capacity factor, availability, completeness, dispatches, money',
          params: Type.Object({ nodeId: NodeId }),
          querystring: PeriodQuery('local date YYYY-MM-DD'),
          response: { 200: Type.Object({ ...Header, days: Type.Array(Row) }), ...errorResponses },
        },
      },
      async (req) => service.daily({ nodeId: req.params.nodeId, ...req.query }),
    );
    app.get(
      '/api/analytics/:nodeId/monthly',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['analytics'],
          summary: 'per local month: the combination of its local days',
          params: Type.Object({ nodeId: NodeId }),
          querystring: PeriodQuery('month YYYY-MM'),
          response: { 200: Type.Object({ ...Header, months: Type.Array(Row) }), ...errorResponses },
        },
      },
      async (req) => service.monthly({ nodeId: req.params.nodeId, ...req.query }),
    );
    app.get(
      '/api/analytics/:nodeId/benchmarks',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['analytics'],
          summary: "the node's capacity factor, availability, revenue per kW and completeness beside its peer group's quartiles",
          params: Type.Object({ nodeId: NodeId }),
          querystring: Type.Object(
            {
              from: DateParam('first local date YYYY-MM-DD, included'),
              to: DateParam('last local date YYYY-MM-DD, included'),
              tz: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: "IANA time zone in which every peer's dates are taken (default: each peer's own)" })),
            },
            { additionalProperties: false },
          ),
          response: {
            200: Type.Object({
              nodeId: Type.String(),
              type: Type.String(),
              from: Type.String(),
              to: Type.String(),
              peerCount: Type.Integer(),
              capacityFactor: Figure,
              availabilityPct: Figure,
              revenuePerKw: Figure,
              completenessPct: Figure,
            }),
            ...errorResponses,
          },
        },
      },
      async (req) => service.benchmarks({ nodeId: req.params.nodeId, ...req.query }),
    );
    app.get(
      '/api/analytics/portfolio',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['analytics'],
          summary: 'totals and per-type breakdown of every node not decommissioned over [from, to)',
          querystring: Type.Object(
            {
              from: DateParam('RFC 3339, epoch ms, or YYYY-MM-DD (00:00 UTC); included'),
              to: DateParam('RFC 3339, epoch ms, or YYYY-MM-DD (00:00 UTC); excluded'),
            },
            { additionalProperties: false },
          ),
          response: {
            200: Type.Object({ from: Type.String(), to: Type.String(), hours: Type.Number(), totals: Portfolio, byType: Type.Array(Type.Intersect([Type.Object({ type: Type.String() }), Portfolio])) }),
            ...errorResponses,
          },
        },
      },
      async (req) => service.portfolio(req.query),
    );
  };
}
