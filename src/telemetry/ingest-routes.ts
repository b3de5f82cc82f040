import { errorCodes, type FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { Ajv } from 'ajv';
import { NODE_ID_PATTERN, NodeId, StringEnum, TimeInput, bodyErrorResponses, errorResponses } from '../http/schemas.js';
import { fieldBounds, HEALTH_STATUSES, QUALITIES } from './validate.js';
import { MAX_BATCH_READINGS, type TelemetryIngestService } from './ingest-service.js';

/** Largest batch body: 10,000 readings that each carry a full 4 KiB `extra` still fit (bytes). */
export const BATCH_BODY_LIMIT = 48 * 1024 * 1024;

/** A numeric field as documented, with the bounds the validator applies. */
const bounded = (api: Parameters<typeof fieldBounds>[0], description: string) => Type.Number({ description, ...fieldBounds(api) });
const n = (api: Parameters<typeof fieldBounds>[0], description: string) => Type.Optional(bounded(api, description));

// An unknown node is a hard error of the reading (400 UNKNOWN_NODE), as in a batch: the single
// route never answers 404.
const { 404: _never, ...singleErrorResponses } = bodyErrorResponses;

/** A reading as documented (validated per reading by the service, so one bad reading does not fail a batch). */
export const ReadingSchema = Type.Object(
  {
    nodeId: Type.Optional(NodeId),
    timestamp: TimeInput,
    powerKw: bounded('powerKw', 'kW; + exports/generates, − consumes/charges'),
    reactivePowerKvar: n('reactivePowerKvar', 'kvar'),
    voltageV: n('voltageV', 'V, ≥ 0'),
    currentA: n('currentA', 'A'),
    frequencyHz: n('frequencyHz', 'Hz, 40–70'),
    stateOfChargePct: n('stateOfChargePct', '%, 0–100'),
    temperatureC: n('temperatureC', '°C, ≥ −273.15 (absolute zero)'),
    irradianceWm2: n('irradianceWm2', 'W/m²'),
    windSpeedMs: n('windSpeedMs', 'm/s, ≥ 0'),
    gridImportKw: n('gridImportKw', 'kW'),
    gridExportKw: n('gridExportKw', 'kW'),
    healthStatus: Type.Optional(StringEnum(HEALTH_STATUSES)),
    quality: Type.Optional(StringEnum(QUALITIES)),
    extra: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'free-form, at most 4 KiB as JSON' })),
  },
  { additionalProperties: false },
);

const Rejected = Type.Array(
  Type.Object({
    index: Type.Integer(),
    nodeId: Type.Union([Type.String(), Type.Null()]),
    errors: Type.Array(Type.Object({ path: Type.String(), message: Type.String() })),
  }),
);

const BatchBody = Type.Object({ readings: Type.Array(ReadingSchema, { minItems: 1, maxItems: MAX_BATCH_READINGS }) }, { additionalProperties: false });

// The route checks only the envelope; readings are checked one by one by the service.
const envelopeAjv = new Ajv({ allErrors: false, strict: false, coerceTypes: false });
const envelopeCheck = envelopeAjv.compile({
  type: 'object',
  properties: { readings: { type: 'array', minItems: 1, maxItems: MAX_BATCH_READINGS } },
  required: ['readings'],
  additionalProperties: false,
});

export function telemetryIngestRoutes(service: TelemetryIngestService): FastifyPluginAsync {
  return async (fastify) => {
    // Readings are parsed with plain JSON.parse, not Fastify's prototype-poisoning guard, which
    // fails the whole request on a "__proto__" key: JSON.parse makes it an ordinary own property,
    // so the reading that carries one is rejected alone as having an unknown field (or, inside
    // `extra`, kept as data). Safe here: readings are validated field by field and never merged
    // into other objects. Other routes keep the guard. (Scoped to this plugin.)
    fastify.removeContentTypeParser('application/json');
    fastify.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
      if ((body as string).length === 0) return done(new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY(), undefined);
      try {
        done(null, JSON.parse(body as string));
      } catch {
        done(new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY(), undefined);
      }
    });
    const app = fastify.withTypeProvider<TypeBoxTypeProvider>();

    app.post(
      '/api/telemetry/batch',
      {
        bodyLimit: BATCH_BODY_LIMIT,
        config: { scope: 'telemetry:write' },
        validatorCompiler: ({ httpPart }) => (httpPart === 'body' ? envelopeCheck : () => true) as never,
        schema: {
          tags: ['telemetry'],
          summary: 'ingest up to 10,000 readings',
          description: 'Each reading is validated on its own: invalid ones are listed in `rejected`, the rest stored. 400 when none is valid. With `mode=async`, 202 once the batch is in the durable queue; 503 + Retry-After when the queue is full or down.',
          querystring: Type.Object({ mode: Type.Optional(StringEnum(['sync', 'async'] as const, { default: 'sync' })) }, { additionalProperties: false }),
          body: BatchBody,
          response: {
            200: Type.Object({ stored: Type.Integer(), duplicates: Type.Integer(), rejected: Rejected }),
            202: Type.Object({ queued: Type.Integer(), rejected: Rejected }),
            ...bodyErrorResponses,
          },
        },
      },
      async (req, reply) => {
        const q = req.query as { mode?: unknown };
        if (q.mode !== undefined && q.mode !== 'sync' && q.mode !== 'async') {
          return reply.code(400).send({ error: { code: 'VALIDATION_ERROR', message: 'querystring: /mode must be one of: sync, async', details: [{ path: '/mode', message: 'must be one of: sync, async' }] } });
        }
        const readings = (req.body as { readings: unknown[] }).readings;
        if (q.mode === 'async') return reply.code(202).send(await service.enqueueBatch(readings));
        return service.ingestBatch(readings);
      },
    );

    app.post(
      '/api/telemetry/:nodeId',
      {
        config: { scope: 'telemetry:write' },
        validatorCompiler: ({ httpPart }) => (httpPart === 'params' ? paramsCheck : () => true) as never,
        schema: {
          tags: ['telemetry'],
          summary: 'ingest one reading',
          params: Type.Object({ nodeId: NodeId }),
          body: ReadingSchema,
          response: { 201: Type.Object({ stored: Type.Integer(), duplicates: Type.Integer() }), ...singleErrorResponses },
        },
      },
      async (req, reply) => {
        const { nodeId } = req.params as { nodeId: string };
        return reply.code(201).send(await service.ingestOne(nodeId, req.body));
      },
    );

    app.get(
      '/api/telemetry/:nodeId/latest',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['telemetry'],
          summary: 'newest reading by measurement time',
          params: Type.Object({ nodeId: NodeId }),
          response: {
            200: Type.Object(
              { nodeId: Type.String(), timestamp: Type.String(), receivedAt: Type.String(), ageSeconds: Type.Number(), stale: Type.Boolean() },
              { additionalProperties: true },
            ),
            ...errorResponses,
          },
        },
      },
      async (req, reply) => reply.send(await service.latest((req.params as { nodeId: string }).nodeId)),
    );
  };
}

const paramsCheck = envelopeAjv.compile({ type: 'object', properties: { nodeId: { type: 'string', pattern: NODE_ID_PATTERN } }, required: ['nodeId'] });
