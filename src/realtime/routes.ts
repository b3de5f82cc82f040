import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { AppError, badRequest } from '../http/errors.js';
import { presentedKey, type KeyRing } from '../http/auth.js';
import { NODE_ID_PATTERN, errorResponses } from '../http/schemas.js';
import type { ErrorDetail } from '../http/errors.js';
import { requireEventId } from './event-log.js';
import type { PortfolioService } from './portfolio.js';
import type { StreamFilter, StreamHub } from './stream.js';

/** Technology types of the contract's node model. */
export const NODE_TYPES = ['solar', 'wind', 'battery', 'data_center', 'ev_charging', 'chp', 'hydro', 'demand_response', 'other'] as const;

const Figures = {
  nodes: Type.Integer({ description: 'non-decommissioned nodes' }),
  online: Type.Integer({ description: 'fresh reading, health not offline/fault' }),
  stale: Type.Integer({ description: 'latest reading older than 3 × telemetryIntervalSeconds (health not offline)' }),
  offline: Type.Integer({ description: 'no reading, or latest healthStatus offline' }),
  fault: Type.Integer({ description: 'fresh reading with healthStatus fault' }),
  capacityKw: Type.Number({ description: 'Σ capacityKw, kW' }),
  currentOutputKw: Type.Number({ description: 'Σ powerKw over fresh readings, kW (+ export, − import)' }),
  generationKw: Type.Number({ description: 'Σ positive powerKw over fresh readings, kW' }),
  consumptionKw: Type.Number({ description: 'Σ −powerKw of negative fresh readings, kW' }),
  storedEnergyKwh: Type.Number({ description: 'Σ stateOfChargePct/100 × storageCapacityKwh over fresh readings, kWh' }),
  storageCapacityKwh: Type.Number({ description: 'Σ storageCapacityKwh of the nodes counted in storedEnergyKwh, kWh' }),
  headroomUpKw: Type.Number({ description: 'possible rise of net export over online active nodes, kW' }),
  headroomDownKw: Type.Number({ description: 'possible fall of net export over online active nodes, kW' }),
};

const PortfolioResponse = Type.Object({
  asOf: Type.String({ description: 'when the figures were computed (at most 5 s ago)' }),
  freshnessFactor: Type.Number({ description: 'a reading is fresh when not older than this × telemetryIntervalSeconds' }),
  ...Figures,
  byType: Type.Array(Type.Object({ type: Type.String(), ...Figures })),
});

const StreamQuery = Type.Object(
  {
    nodeId: Type.Optional(Type.String({ maxLength: 65_000, description: 'comma list of node ids (at most 1000)' })),
    type: Type.Optional(Type.String({ maxLength: 1000, description: `comma list of node types: ${NODE_TYPES.join(', ')}` })),
    events: Type.Optional(Type.String({ maxLength: 100, description: 'comma list of telemetry, portfolio (default both)' })),
    lastEventId: Type.Optional(Type.String({ maxLength: 64, description: 'like the Last-Event-ID header (the header wins)' })),
    apiKey: Type.Optional(Type.String({ maxLength: 512, description: 'API key, for EventSource which cannot send headers' })),
  },
  { additionalProperties: false },
);

const MAX_NODE_IDS = 1000;
const NODE_ID = new RegExp(NODE_ID_PATTERN);

function list(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  return value.split(',').map((s) => s.trim());
}

/** Parses the stream's query into a filter; every problem becomes a detail of one 400. */
export function parseStreamFilter(q: { nodeId?: string; type?: string; events?: string }): StreamFilter {
  const details: ErrorDetail[] = [];
  const nodeIds = list(q.nodeId);
  if (nodeIds) {
    if (nodeIds.length > MAX_NODE_IDS) details.push({ path: '/nodeId', message: `at most ${MAX_NODE_IDS} node ids` });
    const bad = nodeIds.filter((id) => !NODE_ID.test(id));
    if (bad.length) details.push({ path: '/nodeId', message: `not a node id: ${bad.slice(0, 5).map((b) => JSON.stringify(b)).join(', ')}` });
  }
  const types = list(q.type);
  if (types) {
    const bad = types.filter((t) => !(NODE_TYPES as readonly string[]).includes(t));
    if (bad.length) details.push({ path: '/type', message: `unknown type ${bad.slice(0, 5).map((b) => JSON.stringify(b)).join(', ')}; must be one of: ${NODE_TYPES.join(', ')}` });
  }
  const events = list(q.events) ?? ['telemetry', 'portfolio'];
  const badEvents = events.filter((e) => e !== 'telemetry' && e !== 'portfolio');
  if (badEvents.length) details.push({ path: '/events', message: 'must be a comma list of: telemetry, portfolio' });
  if (details.length) throw badRequest(`querystring: ${details[0].path} ${details[0].message}`, details.map((d) => ({ ...d, in: 'querystring' })), 'VALIDATION_ERROR');
  return {
    nodeIds: nodeIds ? new Set(nodeIds) : undefined,
    types: types ? new Set(types) : undefined,
    telemetry: events.includes('telemetry'),
    portfolio: events.includes('portfolio'),
  };
}

/** Header key first, else `?apiKey=`: the read scope (or admin) is needed. */
function authorize(ring: KeyRing, req: FastifyRequest<{ Querystring: { apiKey?: string | string[] } }>): void {
  // Runs before the query is validated: a repeated ?apiKey= arrives as an array.
  const given = req.query.apiKey;
  if (Array.isArray(given)) throw badRequest('apiKey must be given once', [{ path: '/apiKey', message: 'repeated' }], 'VALIDATION_ERROR');
  const key = presentedKey(req) ?? (given || undefined);
  if (!key) throw new AppError(401, 'UNAUTHORIZED', 'missing API key: send Authorization: Bearer <key>, X-API-Key, or ?apiKey=');
  const known = ring.lookup(key);
  if (!known) throw new AppError(401, 'UNAUTHORIZED', 'unknown API key');
  const scopes = known.scopes;
  req.apiKeyId = known.hash;
  if (!scopes.has('read') && !scopes.has('admin')) throw new AppError(403, 'FORBIDDEN', 'this key lacks the "read" scope');
}

export function realtimeRoutes(deps: { portfolio: PortfolioService; hub: StreamHub; keyRing: KeyRing }): FastifyPluginAsyncTypebox {
  return async (app) => {
    // SSE responses are hijacked and would keep the server from closing.
    app.addHook('preClose', async () => deps.hub.closeAll());

    app.get(
      '/api/realtime/portfolio',
      {
        config: { scope: 'read' },
        schema: {
          summary: 'Real-time portfolio: current output, node states, stored energy, headroom (cached at most 5 s)',
          tags: ['realtime'],
          response: { 200: PortfolioResponse, ...errorResponses },
        },
      },
      async () => deps.portfolio.get(),
    );

    app.get(
      '/api/realtime/stream',
      {
        // Authorised in onRequest below (the key may come in the query string), not by the global hook.
        schema: {
          summary: 'Server-Sent Events: telemetry (node latest changed), portfolio (every 5 s), resync; heartbeats every 15 s',
          description:
            'Auth: header key or ?apiKey= (read scope). Reconnect with Last-Event-ID (or ?lastEventId=) to replay the telemetry events missed in the last 5 minutes, filtered as asked.',
          tags: ['realtime'],
          security: [{ bearer: [] }, { apiKey: [] }],
          querystring: StreamQuery,
          headers: Type.Object({ 'last-event-id': Type.Optional(Type.String({ maxLength: 64 })) }),
          response: { 200: { description: 'the event stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errorResponses },
        },
        onRequest: async (req) => authorize(deps.keyRing, req as FastifyRequest<{ Querystring: { apiKey?: string | string[] } }>),
      },
      async (req, reply) => {
        const filter = parseStreamFilter(req.query);
        const header = req.headers['last-event-id'];
        const given = typeof header === 'string' && header !== '' ? header : req.query.lastEventId || undefined;
        const lastEventId = given === undefined ? undefined : requireEventId(given, typeof header === 'string' && header !== '' ? '/headers/last-event-id' : '/lastEventId');
        reply.hijack();
        const headers: Record<string, string | string[] | number> = {};
        for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) headers[k] = v;
        await deps.hub.connect(reply.raw, filter, lastEventId, headers);
      },
    );
  };
}
