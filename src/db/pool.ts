import pg from 'pg';

// int8 (counts, sequences) as JS numbers: every value this service stores fits in 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

/** The database handles every store receives: `pool` for writes, `readPool` for queries that may go to a replica. */
export interface Db {
  pool: pg.Pool;
  readPool: pg.Pool;
  close(): Promise<void>;
}

/** Anything that runs a query: a pool or a client inside a transaction. */
export type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

export interface PoolOptions {
  max?: number;
  /** How long a request waits for a connection before failing (ms): short, so an outage answers 503 fast. */
  connectionTimeoutMillis?: number;
  applicationName?: string;
  onError?: (err: Error) => void;
}

export function createPool(url: string, opts: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.max ?? 20,
    connectionTimeoutMillis: opts.connectionTimeoutMillis ?? 3000,
    idleTimeoutMillis: 30_000,
    application_name: opts.applicationName ?? 'vpp-data-layer',
    keepAlive: true,
  });
  // An idle client's connection can die (database restart); the pool drops it and must not crash the process.
  pool.on('error', (err) => opts.onError?.(err));
  // pg-pool listens for errors only on idle clients. A checked-out client between two queries
  // (a queue consumer, a job, a transaction) that loses its connection when PostgreSQL stops
  // would emit an unhandled 'error' and kill the process. Its holder sees the failure on its
  // next query instead, and release() drops the broken client from the pool.
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });
  return pool;
}

export function createDb(url: string, readUrl: string | undefined, opts: PoolOptions = {}): Db {
  const pool = createPool(url, opts);
  const readPool = readUrl && readUrl !== url ? createPool(readUrl, opts) : pool;
  return {
    pool,
    readPool,
    async close() {
      await pool.end();
      if (readPool !== pool) await readPool.end();
    },
  };
}

/** Runs `fn` in a transaction on one client; rolls back on error. */
export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
