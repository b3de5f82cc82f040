import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { Container } from '../container.js';
import type { HealthCheck } from '../cache/types.js';

const Check = Type.Object({ ok: Type.Boolean() }, { additionalProperties: true });
const HealthResponse = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('degraded'), Type.Literal('down')]),
  checks: Type.Record(Type.String(), Check),
  version: Type.String(),
  uptimeSeconds: Type.Number(),
});
const Plain = Type.Object({ status: Type.String(), database: Type.Optional(Check) });
// A 503 carries the contract's error envelope beside the check results (every 4xx/5xx body has `error`).
const ErrorPart = Type.Object({ code: Type.String(), message: Type.String(), details: Type.Array(Type.Object({ path: Type.String(), message: Type.String() })) });
const NotReady = Type.Object({ ...Plain.properties, error: ErrorPart });
const HealthDown = Type.Object({ ...HealthResponse.properties, error: ErrorPart });

const VERSION = process.env.npm_package_version ?? '0.1.0';
const DB_CHECK_TIMEOUT_MS = 2000;

async function timed<T>(fn: () => Promise<T>, timeoutMs: number): Promise<{ value?: T; latencyMs: number; error?: string }> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    const value = await Promise.race([
      fn(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    return { value, latencyMs: Math.round((performance.now() - t0) * 100) / 100 };
  } catch (err) {
    return { latencyMs: Math.round((performance.now() - t0) * 100) / 100, error: err instanceof Error ? err.message : String(err) };
  } finally {
    clearTimeout(timer);
  }
}

/** Database reachable and every migration the code expects applied. */
export async function databaseCheck(container: Container): Promise<HealthCheck> {
  const r = await timed(async () => {
    const { rows } = await container.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM schema_migrations WHERE name = ANY($1::text[])', [container.expectedMigrations]);
    return rows[0].n;
  }, DB_CHECK_TIMEOUT_MS);
  if (r.error !== undefined) return { ok: false, latencyMs: r.latencyMs, error: r.error };
  const migrated = r.value === container.expectedMigrations.length;
  const pool = container.db.pool;
  return {
    ok: migrated,
    latencyMs: r.latencyMs,
    migrations: migrated ? 'applied' : 'pending',
    pool: { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount },
  };
}

export const healthRoutes: FastifyPluginAsyncTypebox<{ container: Container }> = async (app, { container }) => {
  const noLimit = { rateLimit: false } as Record<string, unknown>;

  app.get('/health/live', { schema: { tags: ['operations'], summary: 'process is running', response: { 200: Plain } }, config: noLimit }, async () => ({ status: 'ok' }));

  app.get(
    '/health/ready',
    { schema: { tags: ['operations'], summary: 'can serve: database reachable and migrated', response: { 200: Plain, 503: NotReady } }, config: noLimit },
    async (_req, reply) => {
      const db = await databaseCheck(container);
      if (db.ok) return reply.code(200).send({ status: 'ready', database: db });
      const why = db.error === undefined ? 'migrations are not applied' : `database unreachable: ${db.error}`;
      return reply.code(503).send({ status: 'not_ready', database: db, error: { code: 'NOT_READY', message: why, details: [] } });
    },
  );

  app.get(
    '/health',
    { schema: { tags: ['operations'], summary: 'dependency checks', response: { 200: HealthResponse, 503: HealthDown } }, config: noLimit },
    async (_req, reply) => {
      const checks: Record<string, HealthCheck> = {};
      const [database, cache] = await Promise.all([databaseCheck(container), container.cache.ping().then((c) => ({ ...c, kind: container.cache.kind }))]);
      checks.database = database;
      checks.cache = cache;
      const jobs = await timed(() => container.jobs.health(), DB_CHECK_TIMEOUT_MS);
      checks.jobs = jobs.value ?? { ok: false, error: jobs.error };
      for (const d of container.domains) {
        for (const [name, check] of Object.entries(d.health ?? {})) {
          const r = await timed(check, DB_CHECK_TIMEOUT_MS);
          checks[name] = r.value ?? { ok: false, error: r.error };
        }
      }
      const status = !database.ok ? 'down' : Object.values(checks).every((c) => c.ok) ? 'ok' : 'degraded';
      return reply.code(status === 'down' ? 503 : 200).send({
        status,
        checks,
        version: VERSION,
        uptimeSeconds: Math.round((Date.now() - container.startedAt) / 1000),
        ...(status === 'down' ? { error: { code: 'DATABASE_UNAVAILABLE', message: `database unreachable: ${database.error ?? 'migrations are not applied'}`, details: [] } } : {}),
      });
    },
  );

  app.get(
    '/metrics',
    {
      schema: {
        tags: ['operations'],
        summary: 'Prometheus metrics (text exposition format); public, like the health endpoints',
        response: { 200: { description: 'Prometheus text', content: { 'text/plain': { schema: { type: 'string' } } } } },
      },
      config: noLimit,
    },
    async (_req, reply) => {
      const body = await container.metrics.registry.metrics();
      return reply.header('content-type', container.metrics.registry.contentType).send(body);
    },
  );
};
