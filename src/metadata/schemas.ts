import { Type, type Static } from 'typebox';
import { NodeId, StringEnum } from '../http/schemas.js';

export const NODE_TYPES = ['solar', 'wind', 'battery', 'data_center', 'ev_charging', 'chp', 'hydro', 'demand_response', 'other'] as const;
export const NODE_STATUSES = ['active', 'inactive', 'maintenance', 'decommissioned'] as const;
export type NodeType = (typeof NODE_TYPES)[number];
export type NodeStatus = (typeof NODE_STATUSES)[number];

/** Largest `technical` object, as UTF-8 bytes of its JSON. */
export const TECHNICAL_MAX_BYTES = 16 * 1024;
export const DEFAULT_TIMEZONE = 'UTC';
export const DEFAULT_TELEMETRY_INTERVAL_SECONDS = 60;
/**
 * Bound on the magnitude of power, energy and price figures (the same as telemetry values and
 * transaction amounts): fleet sums and products of such figures stay far inside float8's range.
 */
export const FIGURE_MAX = 1e12;

export const NodeTypeSchema = StringEnum(NODE_TYPES, { description: 'technology type' });
export const NodeStatusSchema = StringEnum(NODE_STATUSES, { description: 'operating status' });

const Location = Type.Object(
  {
    lat: Type.Number({ minimum: -90, maximum: 90, description: 'latitude in degrees (WGS 84), -90..90 inclusive' }),
    lon: Type.Number({ minimum: -180, maximum: 180, description: 'longitude in degrees (WGS 84), -180..180 inclusive' }),
    country: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'country, e.g. ISO 3166-1 alpha-2 "DE"' })),
    region: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'region, e.g. ISO 3166-2 "DE-HE"' })),
    address: Type.Optional(Type.String({ minLength: 1, maxLength: 500, description: 'postal address' })),
  },
  { additionalProperties: false, description: 'site location; lat and lon are required when a location is given' },
);

const Tariff = Type.Object(
  {
    currency: Type.String({ pattern: '^[A-Z]{3}$', description: 'ISO 4217 code, e.g. EUR' }),
    importPricePerKwh: Type.Optional(Type.Number({ minimum: -FIGURE_MAX, maximum: FIGURE_MAX, description: 'price paid per imported kWh, in `currency`; may be negative' })),
    exportPricePerKwh: Type.Optional(Type.Number({ minimum: -FIGURE_MAX, maximum: FIGURE_MAX, description: 'price received per exported kWh, in `currency`; may be negative' })),
    demandChargePerKw: Type.Optional(Type.Number({ minimum: 0, maximum: FIGURE_MAX, description: 'demand charge per kW of peak, in `currency`, >= 0' })),
  },
  { additionalProperties: false },
);

const Grid = Type.Object(
  {
    connectionPointId: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'grid connection point (e.g. German MaLo/MeLo id)' })),
    voltageLevelKv: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1500, description: 'connection voltage in kV, > 0' })),
    maxImportKw: Type.Optional(Type.Number({ minimum: 0, maximum: FIGURE_MAX, description: 'contracted import limit in kW, >= 0' })),
    maxExportKw: Type.Optional(Type.Number({ minimum: 0, maximum: FIGURE_MAX, description: 'contracted export limit in kW, >= 0' })),
    operator: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'grid operator' })),
  },
  { additionalProperties: false },
);

/** The node document's fields, shared by the input and output schemas. */
const nodeProperties = {
  nodeId: NodeId,
  name: Type.String({ minLength: 1, maxLength: 200 }),
  type: NodeTypeSchema,
  status: NodeStatusSchema,
  capacityKw: Type.Number({ exclusiveMinimum: 0, maximum: FIGURE_MAX, description: 'nameplate / max dispatchable power in kW, > 0, at most 1e12' }),
  storageCapacityKwh: Type.Optional(Type.Number({ minimum: 0, maximum: FIGURE_MAX, description: 'usable storage in kWh, >= 0 (batteries, UPS), at most 1e12' })),
  location: Type.Optional(Location),
  timezone: Type.Optional(
    Type.String({ minLength: 1, maxLength: 64, default: DEFAULT_TIMEZONE, description: 'IANA time zone known to both Node and PostgreSQL; default UTC' }),
  ),
  telemetryIntervalSeconds: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 86400, default: DEFAULT_TELEMETRY_INTERVAL_SECONDS, description: 'expected reporting interval in seconds, 1..86400; default 60' }),
  ),
  tariff: Type.Optional(Tariff),
  grid: Type.Optional(Grid),
  technical: Type.Optional(
    Type.Object({}, { additionalProperties: true, description: `free-form specifications, at most ${TECHNICAL_MAX_BYTES} bytes of JSON` }),
  ),
  tags: Type.Optional(
    Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 50, uniqueItems: true, description: 'up to 50 distinct tags of 1..64 characters' }),
  ),
};

/** A node document as clients send it to `POST /api/metadata` (and as a merge patch must leave it). */
export const NodeInput = Type.Object(nodeProperties, { additionalProperties: false });
export type NodeInput = Static<typeof NodeInput>;

/**
 * A stored node document: the input with its defaults applied (timezone, telemetryIntervalSeconds
 * always present).
 */
export type NodeDoc = NodeInput & { timezone: string; telemetryIntervalSeconds: number };

const versionFields = {
  version: Type.Integer({ minimum: 1, description: 'starts at 1, +1 per change; the ETag' }),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
};

/** A node as the API returns it. */
export const NodeView = Type.Object({ ...nodeProperties, ...versionFields }, { description: 'node' });
export type NodeView = NodeDoc & { version: number; createdAt: string; updatedAt: string };

export const NearbyNodeView = Type.Object(
  { ...nodeProperties, ...versionFields, distanceKm: Type.Number({ minimum: 0, description: 'great-circle distance in km' }) },
  { description: 'node with its distance' },
);
export type NearbyNodeView = NodeView & { distanceKm: number };

export const HistoryEntryView = Type.Object({
  version: Type.Integer({ minimum: 1 }),
  kind: StringEnum(['create', 'patch'] as const),
  changedAt: Type.String({ format: 'date-time' }),
  changedBy: Type.Union([Type.String(), Type.Null()], { description: 'key:<first 12 hex of the key hash>, or null' }),
  patch: Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()], { description: 'the merge patch as sent; null for the creation' }),
  node: Type.Object(nodeProperties, { description: 'the whole document after this change' }),
});
export interface HistoryEntryView {
  version: number;
  kind: 'create' | 'patch';
  changedAt: string;
  changedBy: string | null;
  patch: Record<string, unknown> | null;
  node: NodeDoc;
}
