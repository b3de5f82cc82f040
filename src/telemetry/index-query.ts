import type { Domain, Infra } from '../container.js';
import { telemetryQueryRoutes } from './query-routes.js';
import { TelemetryQueryService } from './query-service.js';
import { RollupRefresher } from './rollup-refresher.js';

/** How often the rollup refresher runs (ms). Queries stay exact in between: dirty buckets are read from raw. */
export const ROLLUP_REFRESH_INTERVAL_MS = 5_000;

/**
 * Telemetry rollups and historical queries: the `rollup-refresh` job and
 * `GET /api/telemetry/:nodeId/historical`. Energy semantics for other domains are in `energy.ts`.
 */
export function createTelemetryQueryDomain(infra: Infra): Domain & { service: TelemetryQueryService; refresher: RollupRefresher } {
  const service = new TelemetryQueryService({ db: infra.db, nodes: infra.nodes, metrics: infra.metrics });
  const refresher = new RollupRefresher(infra.db, infra.nodes, infra.logger.child({ component: 'rollup-refresher' }), { settleMs: infra.config.rollupSettleSeconds * 1000 });
  infra.jobs.register({
    name: 'rollup-refresh',
    intervalMs: ROLLUP_REFRESH_INTERVAL_MS,
    async run({ signal }) {
      const r = await refresher.refreshOnce(signal);
      return { ...r };
    },
  });
  return { routes: telemetryQueryRoutes(service), service, refresher };
}
