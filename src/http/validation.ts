import { Ajv, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { FastifySchemaCompiler } from 'fastify';
import type { ErrorDetail } from './errors.js';

// ajv-formats is CommonJS; under NodeNext its default export arrives wrapped.
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

function makeAjv(coerce: boolean): Ajv {
  const ajv = new Ajv({
    allErrors: true,
    // Unknown fields are errors, never silently dropped: strict input is part of the contract.
    removeAdditional: false,
    useDefaults: true,
    coerceTypes: coerce ? 'array' : false,
    strict: false,
  });
  addFormats(ajv);
  return ajv;
}

/** Bodies are validated strictly (no type coercion); query strings, params and headers arrive as text and are coerced. */
export const bodyAjv = makeAjv(false);
export const textAjv = makeAjv(true);

export const validatorCompiler: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) => {
  if (httpPart === 'body') return bodyAjv.compile(schema as object) as ValidateFunction;
  return strictNumbers(schema, textAjv.compile(schema as object) as ValidateFunction);
};

/**
 * Decimal notation only, as the contract writes numbers: Ajv's coercion reads text as JavaScript's
 * Number() does, which also takes hex (0x10), binary (0b1), octal (0o7), surrounding whitespace
 * and "Infinity". Integers are plain digits (no 1e3, no 5.0).
 */
const DECIMAL = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const DIGITS = /^[+-]?\d+$/;

/** Top-level properties of an object schema that take numbers (number or integer, also inside anyOf/oneOf), with the notation each accepts. */
function numericProperties(schema: unknown): [string, RegExp][] {
  const props = (schema as { properties?: Record<string, unknown> } | undefined)?.properties;
  if (!props) return [];
  const kinds = (s: unknown): string[] => {
    const o = s as { type?: unknown; anyOf?: unknown[]; oneOf?: unknown[] } | undefined;
    if (!o) return [];
    const types = (Array.isArray(o.type) ? o.type : [o.type]).filter((x): x is string => x === 'number' || x === 'integer');
    return [...types, ...[...(o.anyOf ?? []), ...(o.oneOf ?? [])].flatMap(kinds)];
  };
  const out: [string, RegExp][] = [];
  for (const k of Object.keys(props)) {
    const ks = kinds(props[k]);
    if (ks.length) out.push([k, ks.includes('number') ? DECIMAL : DIGITS]);
  }
  return out;
}

/** `validate` for text parts (query, params, headers), refusing numbers not written in decimal before Ajv coerces them. */
function strictNumbers(schema: unknown, validate: ValidateFunction): ValidateFunction {
  const keys = numericProperties(schema);
  if (keys.length === 0) return validate;
  const wrapped = ((data: unknown) => {
    const o = data as Record<string, unknown> | null;
    if (o && typeof o === 'object') {
      const errors: AjvLikeError[] = [];
      for (const [k, notation] of keys) {
        const v = o[k];
        const texts = Array.isArray(v) ? v : [v];
        if (texts.some((x) => typeof x === 'string' && !notation.test(x))) {
          const message = notation === DIGITS ? 'must be an integer in decimal digits' : 'must be a number in decimal notation';
          errors.push({ instancePath: `/${k}`, keyword: 'type', message, params: {} });
        }
      }
      if (errors.length) {
        wrapped.errors = errors as ValidateFunction['errors'];
        return false;
      }
    }
    const ok = validate(data);
    wrapped.errors = validate.errors;
    return ok;
  }) as ValidateFunction;
  return wrapped;
}

interface AjvLikeError {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
}

/**
 * Turns Ajv errors into the contract's `details`: a JSON pointer per problem, pointing at the
 * offending field itself (for a missing or unknown property, the property's own path).
 */
export function toDetails(errors: readonly AjvLikeError[], prefix = ''): ErrorDetail[] {
  const seen = new Set<string>();
  const out: ErrorDetail[] = [];
  for (const e of errors) {
    let p = e.instancePath;
    let message = e.message ?? 'is invalid';
    if (e.keyword === 'required') {
      p += `/${String(e.params.missingProperty)}`;
      message = 'is required';
    } else if (e.keyword === 'additionalProperties') {
      p += `/${String(e.params.additionalProperty)}`;
      message = 'is not a known field';
    } else if (e.keyword === 'enum') {
      message = `must be one of: ${(e.params.allowedValues as unknown[]).join(', ')}`;
    }
    const path = prefix + p || '/';
    const key = `${path}\u0000${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ path, message });
  }
  return out;
}
