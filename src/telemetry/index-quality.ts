import type { Domain, Infra } from '../container.js';
import { exportRoutes, type ExportRouteOptions } from './export-routes.js';
import { qualityRoutes } from './quality-routes.js';
import { DataQualityService } from './quality-service.js';

/**
 * Telemetry export (GET /api/telemetry/export) and data quality (GET /api/data-quality/:nodeId).
 * Read-only over the raw telemetry table: no background work, nothing to flush.
 */
export function createTelemetryExportDomain(infra: Infra, opts: ExportRouteOptions = {}): Domain & { quality: DataQualityService } {
  const quality = new DataQualityService(infra.db, infra.nodes, infra.metrics);
  const exports = exportRoutes(infra, opts);
  const qualityPlugin = qualityRoutes(quality);
  return {
    quality,
    routes: async (app) => {
      await app.register(exports);
      await app.register(qualityPlugin);
    },
  };
}
