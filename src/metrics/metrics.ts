import { Registry, Histogram, Counter, Gauge, collectDefaultMetrics } from 'prom-client';

/** The parts of a `pg.Pool` the pool gauges read. */
export interface PoolLike {
  totalCount: number;
  idleCount: number;
  waitingCount: number;
  options: { max?: number };
}

/**
 * The service's Prometheus registry and the metrics shared by every domain. Domains add
 * their own metrics to `registry`. One registry per app instance, so tests can build many.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly httpDuration: Histogram<'method' | 'route' | 'status_code'>;
  readonly storeDuration: Histogram<'store' | 'action'>;
  readonly cacheRequests: Counter<'cache' | 'result'>;
  private pools: Record<string, PoolLike> = {};
  private poolGauges?: Gauge[];

  constructor(opts: { defaults?: boolean } = {}) {
    if (opts.defaults !== false) collectDefaultMetrics({ register: this.registry });
    this.httpDuration = new Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request latency by route and status',
      labelNames: ['method', 'route', 'status_code'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    this.storeDuration = new Histogram({
      name: 'store_query_duration_seconds',
      help: 'Time of each store call, by store and action',
      labelNames: ['store', 'action'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [this.registry],
    });
    this.cacheRequests = new Counter({
      name: 'cache_requests_total',
      help: 'Cache lookups by cache and result (hit or miss)',
      labelNames: ['cache', 'result'],
      registers: [this.registry],
    });
  }

  /** Times one store call into `store_query_duration_seconds{store, action}`. */
  async timeStore<T>(store: string, action: string, fn: () => Promise<T>): Promise<T> {
    const end = this.storeDuration.startTimer({ store, action });
    try {
      return await fn();
    } finally {
      end();
    }
  }

  /**
   * Exposes connection-pool use: `db_pool_connections{pool, state}` (state total | idle | active)
   * and `db_pool_waiting_requests{pool}` (callers queued for a connection), read at scrape time.
   * Call once per app; later calls replace the pools watched.
   */
  trackPools(pools: Record<string, PoolLike>): void {
    this.pools = pools;
    if (this.poolGauges) return;
    const current = (): Record<string, PoolLike> => this.pools;
    this.poolGauges = [
      new Gauge({
        name: 'db_pool_connections',
        help: 'Database connections held by each pool, by state (total, idle, active)',
        labelNames: ['pool', 'state'],
        registers: [this.registry],
        collect() {
          for (const [name, p] of Object.entries(current())) {
            this.set({ pool: name, state: 'total' }, p.totalCount);
            this.set({ pool: name, state: 'idle' }, p.idleCount);
            this.set({ pool: name, state: 'active' }, p.totalCount - p.idleCount);
          }
        },
      }),
      new Gauge({
        name: 'db_pool_waiting_requests',
        help: 'Callers waiting for a database connection, by pool',
        labelNames: ['pool'],
        registers: [this.registry],
        collect() {
          for (const [name, p] of Object.entries(current())) this.set({ pool: name }, p.waitingCount);
        },
      }),
      new Gauge({
        name: 'db_pool_max_connections',
        help: 'Configured size of each database pool',
        labelNames: ['pool'],
        registers: [this.registry],
        collect() {
          for (const [name, p] of Object.entries(current())) this.set({ pool: name }, p.options.max ?? 10);
        },
      }),
    ];
  }

  gauge(name: string, help: string, collect: () => number | Promise<number>): Gauge {
    return new Gauge({
      name,
      help,
      registers: [this.registry],
      async collect() {
        this.set(await collect());
      },
    });
  }
}
