import { badRequest, type ErrorDetail } from '../http/errors.js';

/** How one exportable field is read from SQL and written out. */
interface FieldSpec {
  /** API name (camelCase). */
  name: string;
  /** Column of `telemetry`. */
  column: string;
  kind: 'number' | 'text' | 'json' | 'time';
}

/**
 * Every field an export can carry besides `nodeId` and `timestamp`, in the default column order.
 * Numbers are the contract's numeric reading fields; `receivedAt` is opt-in (not in the default set).
 */
const FIELD_SPECS: readonly FieldSpec[] = [
  { name: 'powerKw', column: 'power_kw', kind: 'number' },
  { name: 'reactivePowerKvar', column: 'reactive_power_kvar', kind: 'number' },
  { name: 'voltageV', column: 'voltage_v', kind: 'number' },
  { name: 'currentA', column: 'current_a', kind: 'number' },
  { name: 'frequencyHz', column: 'frequency_hz', kind: 'number' },
  { name: 'stateOfChargePct', column: 'state_of_charge_pct', kind: 'number' },
  { name: 'temperatureC', column: 'temperature_c', kind: 'number' },
  { name: 'irradianceWm2', column: 'irradiance_wm2', kind: 'number' },
  { name: 'windSpeedMs', column: 'wind_speed_ms', kind: 'number' },
  { name: 'gridImportKw', column: 'grid_import_kw', kind: 'number' },
  { name: 'gridExportKw', column: 'grid_export_kw', kind: 'number' },
  { name: 'healthStatus', column: 'health_status', kind: 'text' },
  { name: 'quality', column: 'quality', kind: 'text' },
  { name: 'extra', column: 'extra', kind: 'json' },
  { name: 'receivedAt', column: 'received_at', kind: 'time' },
];

const BY_NAME = new Map(FIELD_SPECS.map((f) => [f.name, f]));

/** Fields exported when `fields` is not given: every reading field of the contract (not `receivedAt`). */
export const DEFAULT_EXPORT_FIELDS: readonly string[] = FIELD_SPECS.filter((f) => f.name !== 'receivedAt').map((f) => f.name);

/** Every name `fields` accepts (besides `nodeId` and `timestamp`, which are always present). */
export const EXPORTABLE_FIELDS: readonly string[] = FIELD_SPECS.map((f) => f.name);

export type ExportFormat = 'csv' | 'ndjson';

/**
 * Parses the `fields` query value: a comma list of field names, in the column order wanted.
 * `nodeId`/`timestamp` are accepted and ignored (always present); duplicates are dropped;
 * unknown names are a 400 listing each one.
 */
export function parseExportFields(raw: string | undefined): string[] {
  if (raw === undefined || raw.trim() === '') return [...DEFAULT_EXPORT_FIELDS];
  const out: string[] = [];
  const errors: ErrorDetail[] = [];
  raw.split(',').forEach((part, i) => {
    const name = part.trim();
    if (name === 'nodeId' || name === 'timestamp') return;
    if (!BY_NAME.has(name)) {
      errors.push({ path: `/fields/${i}`, message: `unknown field "${name}"; known: ${EXPORTABLE_FIELDS.join(', ')}` });
      return;
    }
    if (!out.includes(name)) out.push(name);
  });
  if (errors.length) throw badRequest(`fields: ${errors[0].message}`, errors.map((e) => ({ ...e, in: 'querystring' })), 'VALIDATION_ERROR');
  return out;
}

/** RFC 3339 UTC with milliseconds, as `Date.prototype.toISOString` writes it. */
function isoSql(column: string): string {
  return `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
}

// NULL for NULL and for non-finite values (x - x is NaN for both infinities and NaN), which JSON cannot carry.
function numberSql(column: string): string {
  return `CASE WHEN ${column} - ${column} = 0 THEN ${column}::text END`;
}

/** One RFC 4180 cell: quoted when it holds a comma, a quote or a line break, quotes doubled. */
export function csvCell(s: string): string {
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** The CSV header row (with its line end). */
export function csvHeader(fields: readonly string[]): string {
  return `${['nodeId', 'timestamp', ...fields].join(',')}\n`;
}

/**
 * The SQL expression producing one whole output line (line end included) per reading of
 * `telemetry`, with `$4` the line's constant start for the node (see linePrefix). PostgreSQL
 * formats the line, so the service only moves text: little garbage per row, hence steady memory
 * and high throughput. Floats are written by PostgreSQL's shortest exact representation
 * (extra_float_digits > 0), which parses back to the identical double.
 */
export function lineSql(format: ExportFormat, fields: readonly string[]): string {
  const specs = fields.map((f) => BY_NAME.get(f) as FieldSpec);
  if (format === 'csv') {
    const cells = specs.map((f) => {
      const c = f.column;
      if (f.kind === 'number') return numberSql(c);
      if (f.kind === 'time') return isoSql(c);
      // JSON text always holds quotes, so it is always quoted.
      if (f.kind === 'json') return `'"' || replace(${c}::text, '"', '""') || '"'`;
      return `CASE WHEN ${c} ~ '[",\\r\\n]' THEN '"' || replace(${c}, '"', '""') || '"' ELSE ${c} END`;
    });
    return `concat($4::text, ${isoSql('ts')}${cells.map((c) => `, ',', ${c}`).join('')}, E'\\n')`;
  }
  const members = specs.map((f) => {
    const c = f.column;
    const key = `',${JSON.stringify(f.name)}:'`;
    if (f.kind === 'number') return `${key} || ${numberSql(c)}`;
    if (f.kind === 'time') return `${key} || '"' || ${isoSql(c)} || '"'`;
    if (f.kind === 'json') return `${key} || ${c}::text`;
    return `${key} || to_json(${c})::text`;
  });
  // A NULL member vanishes from concat(): absent keys, as the API shape omits what a reading did not carry.
  return `concat($4::text, ${isoSql('ts')}, '"'${members.map((m) => `, ${m}`).join('')}, E'}\\n')`;
}

/** The constant start of every line of `nodeId`, bound as `$4` of lineSql. */
export function linePrefix(format: ExportFormat, nodeId: string): string {
  return format === 'csv' ? `${csvCell(nodeId)},` : `{"nodeId":${JSON.stringify(nodeId)},"timestamp":"`;
}
