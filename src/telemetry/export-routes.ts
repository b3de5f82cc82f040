import type { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { Counter, Gauge } from 'prom-client';
import type { Infra } from '../container.js';
import { AppError, badRequest, unavailable, type ErrorDetail } from '../http/errors.js';
import { NODE_ID_PATTERN, StringEnum, TimeQuery, errorResponses } from '../http/schemas.js';
import { requireTime } from '../http/time.js';
import { EXPORTABLE_FIELDS, parseExportFields, type ExportFormat } from './export-format.js';
import { openExportStream } from './export-stream.js';
import { negotiate, type Offer } from '../http/negotiate.js';

/** Most node ids one export may name. */
export const EXPORT_MAX_NODES = 1000;

const NODE_ID = new RegExp(NODE_ID_PATTERN);

export const ExportQuery = Type.Object({
  nodeIds: Type.Array(Type.String({ maxLength: 70_000 }), {
    minItems: 1,
    maxItems: EXPORT_MAX_NODES,
    description: `comma list of node ids (the parameter may also be repeated); at most ${EXPORT_MAX_NODES} ids`,
  }),
  from: TimeQuery,
  to: TimeQuery,
  fields: Type.Optional(Type.String({ maxLength: 2000, description: `comma list of columns after nodeId and timestamp; default every reading field. Known: ${EXPORTABLE_FIELDS.join(', ')}` })),
  format: Type.Optional(StringEnum(['csv', 'ndjson'] as const, { description: 'default csv, or ndjson when Accept asks for application/x-ndjson' })),
}, { additionalProperties: false });
type ExportQueryT = Static<typeof ExportQuery>;

export interface ExportRouteOptions {
  /** Exports running at once on this instance (each holds a database connection); above it 503 + Retry-After. */
  maxConcurrent?: number;
  /** A client that takes nothing for this long is cut off (ms, default 60 s; see openExportStream). */
  stallMs?: number;
}

/** Splits, checks and de-duplicates the node ids; sorted so the output order is (nodeId, timestamp). */
export function parseNodeIds(values: readonly string[]): string[] {
  const ids: string[] = [];
  const errors: ErrorDetail[] = [];
  let i = 0;
  for (const value of values) {
    for (const part of value.split(',')) {
      const id = part.trim();
      if (!NODE_ID.test(id)) errors.push({ path: `/nodeIds/${i}`, message: id === '' ? 'empty node id' : `"${id.slice(0, 80)}" is not a valid node id`, in: 'querystring' });
      else ids.push(id);
      i++;
    }
  }
  if (errors.length) throw badRequest(`nodeIds: ${errors[0].message}`, errors.slice(0, 100), 'VALIDATION_ERROR');
  const unique = [...new Set(ids)];
  if (unique.length > EXPORT_MAX_NODES) {
    throw badRequest(`at most ${EXPORT_MAX_NODES} node ids per export (got ${unique.length})`, [{ path: '/nodeIds', message: `more than ${EXPORT_MAX_NODES} ids`, in: 'querystring' }], 'TOO_MANY_NODES');
  }
  // Code-unit order: node ids are ASCII, so this is byte order, independent of any database collation.
  return unique.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

const EXPORT_FORMATS: readonly Offer<ExportFormat>[] = [
  { type: 'text/csv', value: 'csv' },
  { type: 'application/x-ndjson', value: 'ndjson' },
  { type: 'application/ndjson', value: 'ndjson' },
  { type: 'application/jsonl', value: 'ndjson' },
];

function chooseFormat(q: ExportQueryT, accept: string | undefined): ExportFormat {
  return q.format ?? negotiate(accept, EXPORT_FORMATS, 'csv');
}

/** GET /api/telemetry/export: raw readings streamed as CSV or NDJSON. */
export function exportRoutes(infra: Infra, opts: ExportRouteOptions = {}): FastifyPluginAsync {
  const maxConcurrent = opts.maxConcurrent ?? 4;
  let active = 0;
  const rowsExported = new Counter({ name: 'telemetry_export_rows_total', help: 'Readings written by exports', registers: [infra.metrics.registry] });
  const exportsEnded = new Counter({ name: 'telemetry_exports_total', help: 'Exports by outcome (complete, aborted, stalled, failed)', labelNames: ['outcome'], registers: [infra.metrics.registry] });
  new Gauge({
    name: 'telemetry_exports_active',
    help: 'Exports streaming now on this instance',
    registers: [infra.metrics.registry],
    collect() {
      this.set(active);
    },
  });

  const streams = new Set<Readable>();
  return async (fastify) => {
    // Shutdown waits for in-flight requests; an export may run for many minutes, so cut it instead.
    fastify.addHook('preClose', async () => {
      for (const s of streams) s.destroy();
    });
    const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
    app.get(
      '/api/telemetry/export',
      {
        config: { scope: 'read' },
        schema: {
          tags: ['telemetry'],
          summary: 'Stream raw readings as CSV or NDJSON',
          description:
            'Readings in [from, to) of the given nodes, ordered by (nodeId, timestamp), streamed at constant memory. ' +
            'CSV has a header row; NDJSON has one reading per line in API shape. Errors after the first byte end the response early.',
          querystring: ExportQuery,
          response: {
            200: {
              description: 'the readings as a stream: CSV with a header row, or NDJSON with one reading per line',
              content: { 'text/csv': { schema: { type: 'string' } }, 'application/x-ndjson': { schema: { type: 'string' } } },
            },
            ...errorResponses,
          },
        },
      },
      async (req, reply) => {
        const q = req.query;
        const nodeIds = parseNodeIds(q.nodeIds);
        const from = requireTime(q.from, '/from');
        const to = requireTime(q.to, '/to');
        if (from >= to) throw badRequest('from must be before to', [{ path: '/from', message: 'must be before to', in: 'querystring' }], 'INVALID_RANGE');
        const fields = parseExportFields(q.fields);
        const format = chooseFormat(q, req.headers.accept);
        if (infra.config.unknownNodes === 'reject') await requireKnownNodes(infra, nodeIds);

        if (active >= maxConcurrent) throw unavailable(`${maxConcurrent} exports are already running; retry shortly`, 5, 'EXPORT_BUSY');
        active++;
        let stream;
        try {
          stream = await openExportStream(infra.db.readPool, { nodeIds, from, to, fields, format }, {
            stallMs: opts.stallMs,
            onRows: (n) => rowsExported.inc(n),
            onEnd: (outcome, err) => {
              exportsEnded.inc({ outcome });
              if (outcome === 'failed') req.log.warn({ err }, 'export failed mid-stream');
              if (outcome === 'stalled') req.log.info('export cut off: the client took nothing for the stall time');
            },
          });
        } catch (err) {
          active--;
          throw err;
        }
        streams.add(stream);
        stream.once('close', () => {
          active--;
          streams.delete(stream);
        });
        void reply
          .header('content-type', format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson; charset=utf-8')
          .header('cache-control', 'no-store');
        // The 200 schema documents a text body; a stream is sent as is, never serialized.
        return reply.send(stream as never);
      },
    );
  };
}

/** 404 naming every id that has no metadata (checked in memory first, then in the database for ids not yet seen). */
async function requireKnownNodes(infra: Infra, nodeIds: string[]): Promise<void> {
  let missing = nodeIds.filter((id) => !infra.nodes.has(id));
  if (missing.length) {
    const { rows } = await infra.db.readPool.query<{ node_id: string }>('SELECT node_id FROM nodes WHERE node_id = ANY($1::text[])', [missing]);
    const found = new Set(rows.map((r) => r.node_id));
    missing = missing.filter((id) => !found.has(id));
  }
  if (missing.length) {
    throw new AppError(
      404,
      'NODE_NOT_FOUND',
      `unknown node${missing.length > 1 ? 's' : ''}: ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ` and ${missing.length - 10} more` : ''}`,
      missing.slice(0, 100).map((id) => ({ path: '/nodeIds', message: `unknown node "${id}"` })),
    );
  }
}
