import type { FastifyBodyParser, FastifyRequest } from 'fastify';
import { badRequest } from './errors.js';

/**
 * Deepest nesting of objects and arrays a JSON value may have, the value itself counting as one
 * level. JSON.parse reads any depth, but JSON.stringify, Ajv and other recursive code run out of
 * stack at a few thousand levels (a RangeError, which would be a 500): values are checked first.
 */
export const MAX_JSON_DEPTH = 64;

/** True when `value` nests objects/arrays more than `max` levels deep. Iterative: any depth is safe to check. */
export function nestedDeeperThan(value: unknown, max = MAX_JSON_DEPTH): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const stack: object[] = [value];
  const depths: number[] = [1];
  while (stack.length > 0) {
    const v = stack.pop() as Record<string, unknown>;
    const d = depths.pop() as number;
    if (d > max) return true;
    if (Array.isArray(v)) {
      for (const x of v) {
        if (typeof x === 'object' && x !== null) {
          stack.push(x);
          depths.push(d + 1);
        }
      }
    } else {
      for (const k in v) {
        const x = v[k];
        if (typeof x === 'object' && x !== null) {
          stack.push(x);
          depths.push(d + 1);
        }
      }
    }
  }
  return false;
}

/**
 * JSON pointer of the first string or key in `value` that holds a NUL character (which PostgreSQL
 * text and jsonb cannot store), or null. Iterative.
 */
export function nulPath(value: unknown, base = ''): string | null {
  const stack: [unknown, string][] = [[value, base]];
  while (stack.length > 0) {
    const [v, path] = stack.pop() as [unknown, string];
    if (typeof v === 'string') {
      if (v.includes('\u0000')) return path || '/';
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push([v[i], `${path}/${i}`]);
    } else if (typeof v === 'object' && v !== null) {
      const keys = Object.keys(v);
      for (let i = keys.length - 1; i >= 0; i--) {
        const k = keys[i];
        const p = `${path}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;
        if (k.includes('\u0000')) return p;
        stack.push([(v as Record<string, unknown>)[k], p]);
      }
    }
  }
  return null;
}

/** The 400 for a body nested deeper than MAX_JSON_DEPTH. */
export const tooDeep = () =>
  badRequest(`request body: nested more than ${MAX_JSON_DEPTH} levels deep`, [{ path: '/', message: `must not nest objects or arrays more than ${MAX_JSON_DEPTH} levels deep` }], 'VALIDATION_ERROR');

/**
 * JSON pointer of the first key the prototype-poisoning guard refuses (`__proto__`, or
 * `constructor` holding `prototype`) in `value`, parsed by plain JSON.parse (which makes them own
 * properties); null if none. Iterative, as nestedDeeperThan.
 */
function forbiddenKeyPath(value: unknown): string | null {
  const stack: [unknown, string][] = [[value, '']];
  while (stack.length > 0) {
    const [v, path] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    for (const k of Object.keys(v)) {
      const child = (v as Record<string, unknown>)[k];
      const p = `${path}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      if (k === '__proto__' || (k === 'constructor' && child !== null && typeof child === 'object' && Object.hasOwn(child, 'prototype'))) return p;
      stack.push([child, p]);
    }
  }
  return null;
}

/**
 * Wraps a string JSON body parser so that a body nested deeper than MAX_JSON_DEPTH gets a 400,
 * and a body the prototype-poisoning guard refuses gets a 400 that says so and where, rather than
 * "not valid JSON".
 */
export function depthLimited(parse: FastifyBodyParser<string>): FastifyBodyParser<string> {
  return (req: FastifyRequest, body: string, done) => {
    parse(req, body, (err, value) => {
      // Fastify reports the guard's refusal as invalid JSON: a body that plain JSON.parse reads was refused by the guard.
      if (err && (err as { code?: string }).code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
        let plain: unknown;
        let parsed = false;
        try {
          plain = JSON.parse(body);
          parsed = true;
        } catch {
          /* not JSON after all: keep the parser's error */
        }
        if (parsed) {
          if (nestedDeeperThan(plain)) return done(tooDeep(), undefined);
          const path = forbiddenKeyPath(plain);
          if (path !== null) {
            const message = 'keys named "__proto__", or "constructor" holding "prototype", are not accepted (telemetry readings excepted)';
            return done(badRequest(`request body: ${message}`, [{ path, message: 'key not accepted' }], 'VALIDATION_ERROR'), undefined);
          }
        }
      }
      if (err) return done(err, undefined);
      if (nestedDeeperThan(value)) return done(tooDeep(), undefined);
      done(null, value);
    });
  };
}
