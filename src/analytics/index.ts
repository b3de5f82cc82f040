import type { Domain, Infra } from '../container.js';
import { AnalyticsCache } from './cache.js';
import { analyticsRoutes } from './routes.js';
import { AnalyticsService } from './service.js';

export { AnalyticsService } from './service.js';
export type { AnalyticsRow, BenchmarksAnswer, BenchmarkFigure, DailyAnswer, MonthlyAnswer, PortfolioAnswer, PortfolioFigures } from './service.js';
export { energyForNodes, type EnergyFigures, type NodePeriods } from './energy-many.js';

/** Analytics: daily / monthly per node, peer benchmarks, portfolio; answers cached in `infra.cache`. */
export function createAnalyticsDomain(infra: Infra): Domain & { service: AnalyticsService } {
  const logger = infra.logger.child({ domain: 'analytics' });
  const cache = new AnalyticsCache(infra.cache, infra.pubsub, infra.nodes, infra.metrics, logger);
  const service = new AnalyticsService({ db: infra.db, nodes: infra.nodes, cache, metrics: infra.metrics });
  return {
    service,
    routes: analyticsRoutes(service),
    start: () => cache.start(),
    stop: () => cache.stop(),
  };
}
