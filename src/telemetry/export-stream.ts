import { Readable } from 'node:stream';
import type pg from 'pg';
import QueryStream from 'pg-query-stream';
import { isoUtc } from '../http/time.js';
import { csvHeader, linePrefix, lineSql, type ExportFormat } from './export-format.js';

/** What to export. Nodes are written in the order given (the route sorts them), each node's readings by timestamp. */
export interface ExportPlan {
  /** Node ids, written one after the other in this order. */
  nodeIds: readonly string[];
  /** Range start, epoch ms, inclusive. */
  from: number;
  /** Range end, epoch ms, exclusive. */
  to: number;
  /** Columns after nodeId and timestamp, API names (see export-format.ts). */
  fields: readonly string[];
  format: ExportFormat;
}

export interface ExportStreamOptions {
  /** Rows fetched from the server-side cursor per round trip (default 500: small batches die young, so the heap stays small). */
  batchSize?: number;
  /** Characters gathered before a chunk is handed to the response (default 64 Ki). */
  chunkChars?: number;
  /** Called with the number of rows of every chunk produced. */
  onRows?(rows: number): void;
  /**
   * A client that takes nothing for this long (ms, default 60 s) is cut off: the export ends as
   * `stalled`, freeing its slot, its connection and the snapshot it holds open.
   */
  stallMs?: number;
  /** Called once when the export ends: `complete`, `aborted` (client gone), `stalled` (client stopped reading) or `failed` (database error). */
  onEnd?(outcome: ExportOutcome, err?: unknown): void;
}

export type ExportOutcome = 'complete' | 'aborted' | 'stalled' | 'failed';

class ExportAborted extends Error {
  constructor() {
    super('export aborted: the client went away');
  }
}

/**
 * Waits for the next rows buffered in `qs` (in array row mode), or null at its end. Rejects on
 * the query's error or when `signal` aborts: unlike the stream's async iterator, this never
 * hangs on a cursor whose connection is being torn down.
 */
function nextRows(qs: QueryStream, signal: AbortSignal): Promise<unknown[][] | null> {
  const rows: unknown[][] = [];
  for (let r = qs.read() as unknown[] | null; r !== null; r = qs.read() as unknown[] | null) rows.push(r);
  if (rows.length) return Promise.resolve(rows);
  if (qs.readableEnded) return Promise.resolve(null);
  if (signal.aborted) return Promise.reject(new ExportAborted());
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      qs.off('readable', onReadable);
      qs.off('end', onEnd);
      qs.off('error', onError);
      signal.removeEventListener('abort', onAbort);
    };
    const onReadable = () => {
      cleanup();
      nextRows(qs, signal).then(resolve, reject);
    };
    const onEnd = () => {
      cleanup();
      resolve(null);
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onAbort = () => {
      cleanup();
      reject(new ExportAborted());
    };
    qs.on('readable', onReadable);
    qs.on('end', onEnd);
    qs.on('error', onError);
    signal.addEventListener('abort', onAbort);
  });
}

/**
 * Opens a streaming export: one connection from `pool`, one REPEATABLE READ snapshot (so every
 * node is read as of the same moment), and per node a server-side cursor over
 * `[from, to)` in timestamp order. Rows are formatted as they arrive and handed on only as fast
 * as the consumer reads (back-pressure reaches the cursor: no fetch happens while the response
 * is full), so memory stays constant whatever the range.
 *
 * Resolves once the first chunk is ready (or the export is known to be empty), so a database
 * error before the first byte still reaches the caller as a rejection and can become an error
 * response. Destroying the returned stream (client disconnect) aborts: the connection is closed
 * rather than returned to the pool, which ends the query on the server.
 */
export async function openExportStream(pool: pg.Pool, plan: ExportPlan, opts: ExportStreamOptions = {}): Promise<Readable> {
  const batchSize = opts.batchSize ?? 500;
  const chunkChars = opts.chunkChars ?? 64 * 1024;
  // The comment names the query in pg_stat_activity.
  const sql = `/* telemetry-export */ SELECT ${lineSql(plan.format, plan.fields)} FROM telemetry
    WHERE node_id = $1 AND ts >= $2::timestamptz AND ts < $3::timestamptz ORDER BY ts`;
  const params = [isoUtc(plan.from), isoUtc(plan.to)];
  const abort = new AbortController();
  const client = await pool.connect();
  // A checked-out client that loses its connection emits 'error'; without a listener that would crash the process.
  const onClientError = () => abort.abort();
  client.on('error', onClientError);
  let released = false;
  let completed = false;
  let ended = false;
  let stalled = false;
  const end = (outcome: 'complete' | 'aborted' | 'failed', err?: unknown) => {
    if (ended) return;
    ended = true;
    opts.onEnd?.(stalled && outcome === 'aborted' ? 'stalled' : outcome, err);
  };
  const stallMs = opts.stallMs ?? 60_000;

  async function* chunks(): AsyncGenerator<string> {
    let failure: unknown;
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      // Any value above 0 makes PostgreSQL print floats in their shortest exact form.
      await client.query('SET LOCAL extra_float_digits = 1');
      let buf = plan.format === 'csv' ? csvHeader(plan.fields) : '';
      let bufRows = 0;
      for (const nodeId of plan.nodeIds) {
        const qs = new QueryStream(sql, [nodeId, ...params, linePrefix(plan.format, nodeId)], { batchSize, rowMode: 'array' });
        // Errors are taken through nextRows; this keeps a late one (after release) from being unhandled.
        qs.on('error', () => undefined);
        client.query(qs);
        for (let rows = await nextRows(qs, abort.signal); rows !== null; rows = await nextRows(qs, abort.signal)) {
          for (const row of rows) buf += row[0] as string;
          bufRows += rows.length;
          if (buf.length >= chunkChars) {
            opts.onRows?.(bufRows);
            const out = buf;
            buf = '';
            bufRows = 0;
            yield out;
          }
        }
      }
      await client.query('COMMIT');
      completed = true;
      if (buf) {
        opts.onRows?.(bufRows);
        yield buf;
      }
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      if (!released) {
        released = true;
        client.off('error', onClientError);
        if (completed) {
          client.release();
        } else {
          // Mid-cursor the connection's state is not worth recovering: closing it ends the server's query too.
          client.on('error', () => undefined);
          client.release(new Error('export did not complete'));
        }
      }
      if (completed) end('complete');
      else if (abort.signal.aborted || failure instanceof ExportAborted || failure === undefined) end('aborted');
      else end('failed', failure);
    }
  }

  const it = chunks();
  // Pull the first chunk before anything is sent, so a failure here is still an ordinary error response.
  const first = await it.next();
  // Each chunk is handed over with a timer: the stream pulls the next one only once the client has
  // taken enough of the last, so a generator left waiting at its yield for stallMs means a client
  // that stopped reading (a slow one still pulls now and then).
  let stallTimer: NodeJS.Timeout | undefined;
  async function* all(): AsyncGenerator<string> {
    try {
      for (let r = first; !r.done; r = await it.next()) {
        stallTimer = setTimeout(() => {
          stalled = true;
          stream.destroy();
        }, stallMs);
        yield r.value;
        clearTimeout(stallTimer);
      }
    } finally {
      clearTimeout(stallTimer);
      await it.return(undefined);
    }
  }
  const stream = Readable.from(all(), { objectMode: false });
  stream.once('close', () => {
    if (completed && released) return;
    abort.abort();
    // Destroyed before its first read, the outer generator never started, so its finally cannot
    // close the inner one: end it here (queued behind a pending step, else run at once).
    it.return(undefined).catch(() => undefined);
  });
  return stream;
}
