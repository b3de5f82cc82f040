/**
 * Ingestion clients for fault tests: each sends single readings in sync mode, one at a time,
 * to `POST /api/telemetry/:nodeId`, and records what the service acknowledged.
 */
import pg from 'pg';

export interface Outcome {
  /** When the answer came (performance.now() ms). */
  at: number;
  status: number | 'network-error' | 'timeout';
  latencyMs: number;
  retryAfter: string | null;
  code?: string;
}

export interface LoadResult {
  /** `nodeId|epochMs` of every reading answered with a 2xx. */
  acked: Set<string>;
  outcomes: Outcome[];
}

export interface Load {
  result: LoadResult;
  /** Stops the clients after their current request and resolves when all have stopped. */
  stop(): Promise<LoadResult>;
  /** Waits until at least `n` readings have been acknowledged in all. */
  waitAcked(n: number, timeoutMs?: number): Promise<void>;
}

/**
 * Starts `clients` clients against `baseUrl()` (a function, so a test can point them at a
 * restarted process). Client i writes node `${prefix}-${i}` with timestamps `t0 + k` ms,
 * k = 0, 1, 2 ...; every request has a `timeoutMs` deadline so a hang is recorded, not waited for.
 */
export function startLoad(opts: { baseUrl: () => string; key: string; clients: number; prefix: string; timeoutMs?: number; pauseMs?: number }): Load {
  const result: LoadResult = { acked: new Set(), outcomes: [] };
  const t0 = Date.now() - 60_000;
  let running = true;
  const loops: Promise<void>[] = [];
  for (let i = 0; i < opts.clients; i++) {
    const nodeId = `${opts.prefix}-${i}`;
    loops.push(
      (async () => {
        for (let k = 0; running; k++) {
          const ts = t0 + k;
          const start = performance.now();
          let o: Outcome;
          try {
            const r = await fetch(`${opts.baseUrl()}/api/telemetry/${nodeId}`, {
              method: 'POST',
              headers: { authorization: `Bearer ${opts.key}`, 'content-type': 'application/json' },
              body: JSON.stringify({ timestamp: ts, powerKw: (k % 1000) / 10 }),
              signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000),
            });
            const text = await r.text();
            let code: string | undefined;
            if (r.status >= 400) code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
            o = { at: performance.now(), status: r.status, latencyMs: performance.now() - start, retryAfter: r.headers.get('retry-after'), code };
            if (r.status >= 200 && r.status < 300) result.acked.add(`${nodeId}|${ts}`);
          } catch (err) {
            const timeout = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
            o = { at: performance.now(), status: timeout ? 'timeout' : 'network-error', latencyMs: performance.now() - start, retryAfter: null };
          }
          result.outcomes.push(o);
          // Refused connections fail in microseconds; a short pause keeps a dead service from spinning the CPU.
          if (o.status === 'network-error' || o.status === 503) await new Promise((r) => setTimeout(r, opts.pauseMs ?? 20));
        }
      })(),
    );
  }
  return {
    result,
    async stop() {
      running = false;
      await Promise.all(loops);
      return result;
    },
    async waitAcked(n, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (result.acked.size < n) {
        if (Date.now() > deadline) {
          const seen: Record<string, number> = {};
          for (const o of result.outcomes) seen[`${o.status}${o.code ? ` ${o.code}` : ''}`] = (seen[`${o.status}${o.code ? ` ${o.code}` : ''}`] ?? 0) + 1;
          throw new Error(`only ${result.acked.size} of ${n} readings acknowledged in ${timeoutMs} ms; answers: ${JSON.stringify(seen)}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

/** `nodeId|epochMs` of every stored reading of nodes whose id starts with `prefix`. */
export async function storedKeys(databaseUrl: string, prefix: string): Promise<Set<string>> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ node_id: string; ms: string }>(
      `SELECT node_id, (extract(epoch FROM ts) * 1000)::bigint::text AS ms FROM telemetry WHERE node_id LIKE $1`,
      [`${prefix}-%`],
    );
    return new Set(rows.map((r) => `${r.node_id}|${r.ms}`));
  } finally {
    await client.end();
  }
}

/** Readings acknowledged but not stored (must be empty). */
export function missing(acked: Set<string>, stored: Set<string>): string[] {
  return [...acked].filter((k) => !stored.has(k));
}
