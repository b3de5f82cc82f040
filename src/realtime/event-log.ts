import { badRequest } from '../http/errors.js';

/** One entry of the replay log: its id and the `telemetry.latest` message exactly as published. */
export interface LoggedEvent {
  /** `<epoch ms>-<sequence>`, strictly increasing in log order. */
  id: string;
  data: string;
}

/**
 * The replay log behind `Last-Event-ID`: every `telemetry.latest` message, under an id that
 * every instance sharing the log agrees on, kept for `windowMs`.
 */
export interface EventLog {
  readonly kind: 'redis' | 'memory';
  /** How long entries are kept, ms. */
  readonly windowMs: number;
  /**
   * Appends `messages` in order and returns their ids, in the same order. Instances sharing a log
   * that each append the same fanned-out list get the same ids back (the list is logged once).
   */
  appendMany(messages: readonly string[]): Promise<string[]>;
  /** Up to `limit` entries with an id greater than `afterId`, oldest first. */
  readAfter(afterId: string, limit: number): Promise<LoggedEvent[]>;
  close(): Promise<void>;
}

const EVENT_ID = /^(\d{1,15})-(\d{1,15})$/;

/** Parses an event id into [ms, seq]; undefined when malformed. */
export function parseEventId(id: string): [number, number] | undefined {
  const m = EVENT_ID.exec(id);
  if (!m) return undefined;
  return [Number(m[1]), Number(m[2])];
}

/** Validates a client-supplied `Last-Event-ID`; 400 naming `path` when malformed. */
export function requireEventId(id: string, path: string): string {
  if (!parseEventId(id)) {
    throw badRequest(`${path.replace(/^\//, '')} must be an event id of this stream (<ms>-<seq>)`, [{ path, message: 'malformed event id' }], 'VALIDATION_ERROR');
  }
  return id;
}

/** Orders two well-formed event ids: negative when a < b. */
export function compareEventIds(a: string, b: string): number {
  const [am, as] = parseEventId(a) ?? [0, 0];
  const [bm, bs] = parseEventId(b) ?? [0, 0];
  return am !== bm ? am - bm : as - bs;
}

/** Epoch ms of an event id (the time it was logged). */
export function eventIdTime(id: string): number {
  return parseEventId(id)?.[0] ?? 0;
}
