import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AppError, fromDatabaseError, type ErrorDetail } from './errors.js';
import { toDetails } from './validation.js';

interface Envelope {
  error: { code: string; message: string; details: ErrorDetail[] };
}

function envelope(code: string, message: string, details: ErrorDetail[] = []): Envelope {
  return { error: { code, message, details } };
}

/** Fastify's own client errors, by their code. */
const FASTIFY_CODES: Record<string, { status: number; code: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, code: 'PAYLOAD_TOO_LARGE' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { status: 400, code: 'INVALID_JSON' },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, code: 'INVALID_JSON' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { status: 400, code: 'BAD_REQUEST' },
  FST_ERR_BAD_URL: { status: 400, code: 'BAD_URL' },
  FST_ERR_MAX_PARAM_LENGTH: { status: 414, code: 'URI_TOO_LONG' },
};

/**
 * Fastify's `frameworkErrors` option: errors its router raises before any route or hook runs (a
 * path with bad percent-encoding, a path parameter above maxParamLength), answered in the envelope.
 */
export function frameworkErrors(err: FastifyError, _req: FastifyRequest, reply: FastifyReply): void {
  const { status, code } = FASTIFY_CODES[err.code] ?? { status: 400, code: 'BAD_REQUEST' };
  void reply.code(status).send(envelope(code, err.message));
}

/**
 * Fastify's `clientErrorHandler` option: requests Node's HTTP parser refuses before Fastify sees
 * them (headers or URL above the size limit, malformed requests, read timeouts) get the envelope
 * on the raw socket, which is then closed (the parser's state is lost).
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, reason, body] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large', envelope('HEADERS_TOO_LARGE', 'the request line and headers exceed the server limit (128 KiB)')]
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', envelope('REQUEST_TIMEOUT', 'the request was not received in time')]
        : [400, 'Bad Request', envelope('BAD_REQUEST', 'malformed HTTP request')];
  const text = JSON.stringify(body);
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${reason}\r\nContent-Length: ${Buffer.byteLength(text)}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${text}`);
  }
  socket.destroy(err);
}

/**
 * The one error handler: every error becomes the contract's envelope. Client errors keep
 * their message; anything unexpected is logged with the request and answered as a bare 500.
 */
export function registerErrorHandling(app: FastifyInstance): void {
  app.setNotFoundHandler((req: FastifyRequest, reply: FastifyReply) => {
    void reply.code(404).send(envelope('ROUTE_NOT_FOUND', `no route for ${req.method} ${req.url.split('?')[0]}`));
  });

  app.setErrorHandler((err: FastifyError | AppError | Error, req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof AppError) {
      if (err.retryAfter !== undefined) void reply.header('Retry-After', String(err.retryAfter));
      if (err.statusCode >= 500) req.log.warn({ err }, err.message);
      return reply.code(err.statusCode).send(envelope(err.code, err.message, err.details));
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      const ctx = fe.validationContext ?? 'body';
      const details = toDetails(fe.validation as never);
      const first = details[0];
      const where = ctx === 'body' ? 'request body' : ctx;
      const message = first ? `${where}: ${first.path} ${first.message}${details.length > 1 ? ` (and ${details.length - 1} more)` : ''}` : `invalid ${where}`;
      return reply.code(400).send(envelope('VALIDATION_ERROR', message, details.map((d) => ({ ...d, in: ctx }))));
    }
    const known = fe.code ? FASTIFY_CODES[fe.code] : undefined;
    if (known) return reply.code(known.status).send(envelope(known.code, fe.message));
    const db = fromDatabaseError(err);
    if (db) {
      if (db.retryAfter !== undefined) void reply.header('Retry-After', String(db.retryAfter));
      req.log.warn({ err }, 'database error mapped to client status');
      return reply.code(db.statusCode).send(envelope(db.code, db.message));
    }
    const status = typeof fe.statusCode === 'number' ? fe.statusCode : 500;
    if (status >= 400 && status < 500) {
      return reply.code(status).send(envelope(fe.code ?? 'BAD_REQUEST', fe.message));
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send(envelope('INTERNAL', 'internal error; the request id identifies it in the logs'));
  });
}
