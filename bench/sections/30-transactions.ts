/**
 * Transaction-log figures: append throughput over real HTTP (one client in sequence, and 16
 * concurrent clients), the group writer against one-record-per-commit at the service level,
 * and chain verification speed.
 */
import http from 'node:http';
import pg from 'pg';
import { Metrics } from '../../src/metrics/metrics.js';
import { TransactionsService } from '../../src/transactions/service.js';
import type { AppendInput } from '../../src/transactions/service.js';
import { median, startBenchServer, type BenchContext, type BenchSection } from '../harness.js';

const KEY = 'bench-transactions-admin-key';
const SEQUENTIAL = 400;
const CONCURRENT_CLIENTS = 16;
const PER_CLIENT = 150;
const VERIFY_TARGET = 30_000;

/** The service on `databaseUrl` with 16 battery nodes, and its port. */
async function startService(ctx: BenchContext, databaseUrl: string) {
  const seed = new pg.Client({ connectionString: databaseUrl });
  await seed.connect();
  try {
    await seed.query(`INSERT INTO nodes (node_id, type, status, capacity_kw, doc) SELECT 'tx-' || i, 'battery', 'active', 1000, '{}'::jsonb FROM generate_series(0, 15) i`);
  } finally {
    await seed.end();
  }
  const server = await startBenchServer(databaseUrl, { name: 'tx', apiKey: KEY, redisUrl: ctx.redisUrl });
  return Object.assign(server, { port: Number(new URL(server.baseUrl).port) });
}

function record(i: number, client: number): AppendInput {
  return {
    transactionId: `bench-${client}-${i}-${Math.random().toString(36).slice(2)}`,
    nodeId: `tx-${client % 16}`,
    type: i % 4 === 0 ? 'settlement' : 'dispatch',
    timestamp: Date.UTC(2026, 10, 27) + i * 60_000,
    market: 'aFRR',
    energyKwh: 250,
    powerKw: 1000,
    priceEurMwh: 92.1,
    amountEur: 23.03,
    status: 'confirmed',
    details: { bench: true, i },
  };
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function post(port: number, body: unknown): Promise<number> {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: '/api/transactions', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), authorization: `Bearer ${KEY}` } },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 201 ? resolve(res.statusCode) : reject(new Error(`POST answered ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

function get(port: number, url: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: url, agent, headers: { authorization: `Bearer ${KEY}` } }, (res) => {
        let s = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (s += c));
        res.on('end', () => resolve(JSON.parse(s)));
      })
      .on('error', reject);
  });
}

export const section: BenchSection = {
  name: 'transactions',
  async run(ctx) {
    const seqRates: number[] = [];
    const concRates: number[] = [];
    const verifyRates: number[] = [];
    const groupRates: number[] = [];
    const singleRates: number[] = [];
    for (let run = 0; run < ctx.runs; run++) {
      const svc = await startService(ctx, await ctx.freshDatabase());
      try {
        let t0 = performance.now();
        for (let i = 0; i < SEQUENTIAL; i++) await post(svc.port, record(i, 0));
        seqRates.push(SEQUENTIAL / ((performance.now() - t0) / 1000));

        t0 = performance.now();
        await Promise.all(
          Array.from({ length: CONCURRENT_CLIENTS }, async (_, c) => {
            for (let i = 0; i < PER_CLIENT; i++) await post(svc.port, record(i, c));
          }),
        );
        concRates.push((CONCURRENT_CLIENTS * PER_CLIENT) / ((performance.now() - t0) / 1000));

        // The group writer against one commit per record, same service code, 16 appends in flight.
        const infra = svc.container;
        for (const [maxGroupSize, out] of [[500, groupRates], [1, singleRates]] as const) {
          const s = new TransactionsService({ db: infra.db, pubsub: infra.pubsub, nodes: infra.nodes, metrics: new Metrics({ defaults: false }), logger: infra.logger, unknownNodes: 'reject', retentionDays: 730, maxGroupSize });
          const n = 2000;
          let next = 0;
          t0 = performance.now();
          await Promise.all(
            Array.from({ length: 16 }, async (_, c) => {
              while (next < n) await s.append(record(next++, c));
            }),
          );
          out.push(n / ((performance.now() - t0) / 1000));
        }

        // Fill up to VERIFY_TARGET records quickly, then time a full verify over HTTP.
        const s = new TransactionsService({ db: infra.db, pubsub: infra.pubsub, nodes: infra.nodes, metrics: new Metrics({ defaults: false }), logger: infra.logger, unknownNodes: 'reject', retentionDays: 730 });
        const head = await infra.db.pool.query<{ n: number }>('SELECT last_sequence AS n FROM transaction_chain_head');
        const have = head.rows[0].n;
        let k = 0;
        await Promise.all(
          Array.from({ length: 64 }, async (_, c) => {
            while (have + k < VERIFY_TARGET) {
              k++;
              await s.append(record(k, c));
            }
          }),
        );
        t0 = performance.now();
        const v = (await get(svc.port, '/api/transactions/verify')) as { ok: boolean; checked: number };
        const secs = (performance.now() - t0) / 1000;
        if (!v.ok) throw new Error(`verify failed: ${JSON.stringify(v)}`);
        verifyRates.push(v.checked / secs);
      } finally {
        await svc.close();
      }
    }
    ctx.report('transactions', 'append over HTTP, 1 client in sequence', median(seqRates), 'records/s');
    ctx.report('transactions', `append over HTTP, ${CONCURRENT_CLIENTS} concurrent clients`, median(concRates), 'records/s');
    ctx.report('transactions', 'service append, 16 in flight, group writer', median(groupRates), 'records/s');
    ctx.report('transactions', 'service append, 16 in flight, one record per commit', median(singleRates), 'records/s', 'maxGroupSize=1, for comparison');
    ctx.report('transactions', `verify (full chain, ~${VERIFY_TARGET} records)`, median(verifyRates), 'records/s');
  },
};
