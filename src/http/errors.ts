/** One problem in a request: a JSON pointer into the input and what is wrong there. */
export interface ErrorDetail {
  path: string;
  message: string;
  [extra: string]: unknown;
}

/**
 * The service's one error type: an HTTP status, a stable machine-readable `code`, and
 * optional details. Everything a client can cause is thrown as an AppError.
 */
export class AppError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly details: ErrorDetail[] = [],
    /** Seconds, sent as `Retry-After` (429, 503). */
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'AppError';
  }
}

export const badRequest = (message: string, details: ErrorDetail[] = [], code = 'BAD_REQUEST') =>
  new AppError(400, code, message, details);
export const notFound = (message: string, code = 'NOT_FOUND') => new AppError(404, code, message);
export const conflict = (message: string, code = 'CONFLICT') => new AppError(409, code, message);
export const preconditionFailed = (message: string) => new AppError(412, 'PRECONDITION_FAILED', message);
export const unavailable = (message: string, retryAfter = 1, code = 'SERVICE_UNAVAILABLE') =>
  new AppError(503, code, message, [], retryAfter);

/** SQLSTATE classes and driver errors that mean "the database is not reachable right now". */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '08000', '08001', '08003', '08004', '08006', '53300']);
const UNAVAILABLE_MESSAGES = /ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|timeout exceeded when trying to connect|Connection terminated|terminating connection|the database system is (starting up|shutting down)|Client has encountered a connection error|Connection ended/i;

/** True for a database error that a retry after a short wait may cure (outage, restart, pool exhausted). */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (UNAVAILABLE_SQLSTATES.has(code) || code === 'ECONNREFUSED' || code === 'ECONNRESET')) return true;
  return UNAVAILABLE_MESSAGES.test(err.message);
}

/** Maps a PostgreSQL error to an AppError where it is the client's doing or an outage; otherwise undefined. */
export function fromDatabaseError(err: unknown): AppError | undefined {
  if (isDatabaseUnavailable(err)) return unavailable('database unavailable, retry shortly', 2, 'DATABASE_UNAVAILABLE');
  const code = (err as { code?: unknown }).code;
  if (code === '23505') return conflict('resource already exists');
  if (code === '22P02' || code === '22007' || code === '22008' || code === '22003') return badRequest('value out of range or malformed');
  // Text PostgreSQL cannot store (a NUL character, bytes outside UTF-8): the input's doing.
  if (code === '22P05' || code === '22021') return badRequest('text contains a character that cannot be stored (NUL)', [], 'VALIDATION_ERROR');
  if (code === '57014') return new AppError(503, 'QUERY_TIMEOUT', 'query took too long, narrow the request', [], 1);
  return undefined;
}
