import { randomUUID } from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Container } from './container.js';
import { AppError } from './http/errors.js';
import { clientErrorHandler, frameworkErrors, registerErrorHandling } from './http/error-handler.js';
import { authHook, hashKey, presentedKey } from './http/auth.js';
import { validatorCompiler } from './http/validation.js';
import { ErrorResponse } from './http/schemas.js';
import { healthRoutes } from './health/routes.js';
import { securityHeaders } from './http/security-headers.js';
import { depthLimited } from './http/json-depth.js';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Request line plus headers, at most (Node's default is 16 KiB). */
export const MAX_HEADER_BYTES = 128 * 1024;

export interface AppOptions {
  /** Largest request body in bytes for routes that do not set their own (413 above). */
  bodyLimit?: number;
  /** Time to receive a whole request, headers and body (ms; default 120 s): then 408 and the connection is closed. */
  requestTimeoutMs?: number;
  /** How often Node checks requests against that timeout (ms; default Node's 30 s). */
  connectionsCheckingIntervalMs?: number;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** Requests slower than this are logged at info whatever their status (ms). */
const SLOW_REQUEST_MS = 1000;

/**
 * The document with what the routes' JSON Schema 2020-12 says in OpenAPI 3.0's words: numeric
 * `exclusiveMinimum`/`exclusiveMaximum` as a bound plus a boolean flag, `examples` arrays as one
 * `example` (@fastify/swagger converts these only outside `content` maps). On a copy: the
 * document may share objects with the routes' schemas.
 */
function toOpenApi30(original: Record<string, unknown>): Record<string, unknown> {
  const doc = structuredClone(original);
  const stack: unknown[] = [doc];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      for (const x of v) stack.push(x);
    } else if (typeof v === 'object' && v !== null) {
      const o = v as Record<string, unknown>;
      for (const [key, bound] of [
        ['exclusiveMinimum', 'minimum'],
        ['exclusiveMaximum', 'maximum'],
      ] as const) {
        if (typeof o[key] === 'number') {
          o[bound] = o[key];
          o[key] = true;
        }
      }
      // JSON Schema's `examples` array; OpenAPI 3.0 schemas take one `example` (its `examples` maps
      // of Example Objects, in media types and parameters, are objects and stay).
      if (Array.isArray(o.examples)) {
        if (o.examples.length > 0 && o.example === undefined) o.example = o.examples[0];
        delete o.examples;
      }
      for (const x of Object.values(o)) stack.push(x);
    }
  }
  return doc;
}

/** Operations whose body may be left out (@fastify/swagger marks every declared body required). */
const OPTIONAL_BODIES: readonly [path: string, method: string][] = [['/api/transactions/anchors', 'post']];

function optionalBodies(doc: Record<string, unknown>): Record<string, unknown> {
  const paths = doc.paths as Record<string, Record<string, { requestBody?: { required?: boolean } }>> | undefined;
  for (const [p, m] of OPTIONAL_BODIES) {
    const body = paths?.[p]?.[m]?.requestBody;
    if (body) body.required = false;
  }
  return doc;
}

/** Builds the application on a wired container. `server.ts` runs it; tests call `inject`. */
export async function buildApp(container: Container, opts: AppOptions = {}): Promise<FastifyInstance> {
  return buildTypedApp(container, opts) as unknown as Promise<FastifyInstance>;
}

async function buildTypedApp(container: Container, opts: AppOptions) {
  const requestTimeout = opts.requestTimeoutMs ?? 120_000;
  const app = Fastify({
    loggerInstance: container.logger as FastifyBaseLogger,
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // Access logs come from the onResponse hook below (every request at debug; failures and slow
    // ones at info), not Fastify's two info lines per request.
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 200 },
    // Node's default 16 KiB would refuse an export of 1,000 node ids of up to 64 characters in its URL.
    // A body that never arrives would otherwise hold its connection open for ever (Fastify's
    // default is no limit); 120 s lets a 48 MiB batch through at 400 kB/s. The 408 is sent in the
    // envelope by clientErrorHandler. Responses (exports, SSE) are not bounded by it. Node only
    // applies the request timeout when the headers timeout is not longer (checked: with Node's
    // 60 s headers timeout, a 500 ms request timeout never fired).
    http: {
      maxHeaderSize: MAX_HEADER_BYTES,
      requestTimeout,
      headersTimeout: Math.min(60_000, requestTimeout),
      ...(opts.connectionsCheckingIntervalMs ? { connectionsCheckingInterval: opts.connectionsCheckingIntervalMs } : {}),
    },
    requestTimeout,
    frameworkErrors,
    clientErrorHandler,
  }).withTypeProvider<TypeBoxTypeProvider>();

  // Fastify's own JSON parser (prototype-poisoning guard) with a nesting bound (see MAX_JSON_DEPTH).
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, depthLimited(app.getDefaultJsonParser('error', 'error')));
  // Node answers an unsupported `Expect` header itself, with an empty 417: in the envelope instead.
  app.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const body = JSON.stringify({ error: { code: 'EXPECTATION_FAILED', message: `unsupported Expect: ${String(req.headers.expect).slice(0, 100)}`, details: [] } });
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
    res.end(body);
  });
  app.setValidatorCompiler(validatorCompiler);
  registerErrorHandling(app);
  app.addSchema(ErrorResponse);

  // helmet's headers (no CSP: the API serves JSON, the docs page brings its own), computed once.
  const security = securityHeaders({ contentSecurityPolicy: false });
  app.addHook('onRequest', async (req, reply) => {
    void reply.headers(security);
    void reply.header('x-request-id', req.id);
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    const status = reply.statusCode;
    const ms = reply.elapsedTime;
    container.metrics.httpDuration.observe({ method: req.method, route, status_code: String(status) }, ms / 1000);
    // One line per request: at info for failures and slow answers, at debug for the rest. Logging
    // every ingestion request at info costs ~20 µs of CPU each (measured), a fifth of a small
    // request's own cost. The path is logged without its query (it may carry ?apiKey=).
    const level = status >= 400 || ms >= SLOW_REQUEST_MS ? 'info' : 'debug';
    // The logger is pino's (container.logger), which can tell whether a level is on.
    if ((req.log as unknown as { isLevelEnabled(level: string): boolean }).isLevelEnabled(level)) {
      const q = req.url.indexOf('?');
      req.log[level]({ method: req.method, path: q < 0 ? req.url : req.url.slice(0, q), route, statusCode: status, ms: Math.round(ms * 10) / 10 }, 'request');
    }
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'VPP Data Layer', version: process.env.npm_package_version ?? '0.1.0', description: 'Telemetry, node metadata, transaction log, analytics and real-time views of a Virtual Power Plant.' },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer' },
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
        },
      },
    },
    // Routes that need a scope are documented as needing a key.
    transform: ({ schema, url, route }) => {
      const scope = (route as { config?: { scope?: string } }).config?.scope;
      const s = { ...(schema as Record<string, unknown>) };
      if (scope) s.security = [{ bearer: [] }, { apiKey: [] }];
      return { schema: s as never, url };
    },
    // The route schemas are JSON Schema 2020-12; the document is OpenAPI 3.0.3 (toOpenApi30).
    transformObject: (doc) => optionalBodies(toOpenApi30((doc as { openapiObject: Record<string, unknown> }).openapiObject)) as never,
  });
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list' }, staticCSP: false });
  app.get('/docs/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  if (container.config.rateLimitPerMinute > 0) {
    await app.register(rateLimit, {
      global: true,
      max: container.config.rateLimitPerMinute,
      timeWindow: 60_000,
      hook: 'onRequest',
      redis: container.redis,
      nameSpace: `${container.keyPrefix}ratelimit:`,
      // Redis down: serve rather than refuse everyone.
      skipOnError: true,
      keyGenerator: (req) => {
        const key = presentedKey(req);
        return key ? `k:${container.keyRing.lookup(key)?.hash ?? hashKey(key)}` : `ip:${req.ip}`;
      },
      allowList: (req) => {
        const url = req.url;
        return url.startsWith('/health') || url.startsWith('/metrics') || url.startsWith('/docs');
      },
      errorResponseBuilder: (_req, ctx) =>
        new AppError(429, 'RATE_LIMITED', `rate limit of ${ctx.max} requests per minute exceeded; retry in ${ctx.after}`, [], Math.max(1, Math.ceil(ctx.ttl / 1000))),
    });
  }

  app.addHook('onRequest', authHook(container.keyRing));

  await app.register(healthRoutes, { container });
  for (const d of container.domains) if (d.routes) await app.register(d.routes);

  return app;
}
