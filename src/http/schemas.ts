import { Type, type TSchema, type TUnsafe } from 'typebox';
import { TIME_TEXT_MAX } from './time.js';

/** A string restricted to `values`, as a plain JSON-Schema `enum` (clear validation messages, clean OpenAPI). */
export function StringEnum<const T extends readonly string[]>(values: T, opts: { description?: string; default?: T[number] } = {}): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...opts });
}

export const NODE_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$';
export const NodeId = Type.String({ pattern: NODE_ID_PATTERN, description: 'node id', examples: ['dc-fra-01'] });

/** The contract's error envelope. */
export const ErrorResponse = Type.Object(
  {
    error: Type.Object({
      code: Type.String(),
      message: Type.String(),
      details: Type.Array(Type.Object({ path: Type.String(), message: Type.String() }, { additionalProperties: true })),
    }),
  },
  { $id: 'ErrorResponse', description: 'error envelope' },
);

/** An error status that always carries `Retry-After` (seconds). */
const withRetryAfter = (description: string) => ({
  description,
  headers: { 'Retry-After': { type: 'integer', minimum: 0, description: 'seconds to wait before retrying' } },
  content: { 'application/json': { schema: ErrorResponse } },
});

/** Standard error responses, to spread into a route's `response` map. */
export const errorResponses = {
  400: ErrorResponse,
  401: ErrorResponse,
  403: ErrorResponse,
  404: ErrorResponse,
  429: withRetryAfter('rate limited'),
  503: withRetryAfter('a dependency is down, or ingestion back-pressure'),
} as const;

/** The same for routes that take a body: 413 above their body limit, 415 for a body that is not JSON. */
export const bodyErrorResponses = { ...errorResponses, 413: ErrorResponse, 415: ErrorResponse } as const;

/** Input time: RFC 3339 string or epoch milliseconds. */
export const TimeInput = Type.Union([Type.String({ minLength: 1, maxLength: TIME_TEXT_MAX }), Type.Integer({ minimum: 0 })], {
  description: 'RFC 3339 time with offset, or epoch milliseconds',
});

/** Query-string time (always text): RFC 3339 or epoch milliseconds as digits. */
export const TimeQuery = Type.String({ minLength: 1, maxLength: TIME_TEXT_MAX, description: 'RFC 3339 time with offset, or epoch milliseconds' });

export const Limit = Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'page size' });
export const Cursor = Type.String({ maxLength: 1024, description: 'opaque cursor from a previous page' });

export const PaginationQuery = Type.Object({ limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) });

export function Paginated<T extends TSchema>(item: T) {
  return Type.Object({ items: Type.Array(item), nextCursor: Type.Union([Type.String(), Type.Null()]) });
}
