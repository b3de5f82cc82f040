/** The contract's numeric reading fields, as rollups and historical queries know them. */
export interface NumericField {
  /** API name (camelCase). */
  name: string;
  /** Column of `telemetry`. */
  column: string;
  /** Stable code stored in rollup rows (`field` column); never renumber. */
  code: number;
}

export const NUMERIC_FIELDS: readonly NumericField[] = [
  { name: 'powerKw', column: 'power_kw', code: 0 },
  { name: 'reactivePowerKvar', column: 'reactive_power_kvar', code: 1 },
  { name: 'voltageV', column: 'voltage_v', code: 2 },
  { name: 'currentA', column: 'current_a', code: 3 },
  { name: 'frequencyHz', column: 'frequency_hz', code: 4 },
  { name: 'stateOfChargePct', column: 'state_of_charge_pct', code: 5 },
  { name: 'temperatureC', column: 'temperature_c', code: 6 },
  { name: 'irradianceWm2', column: 'irradiance_wm2', code: 7 },
  { name: 'windSpeedMs', column: 'wind_speed_ms', code: 8 },
  { name: 'gridImportKw', column: 'grid_import_kw', code: 9 },
  { name: 'gridExportKw', column: 'grid_export_kw', code: 10 },
];

export const FIELD_BY_NAME: ReadonlyMap<string, NumericField> = new Map(NUMERIC_FIELDS.map((f) => [f.name, f]));

/** powerKw: the field energy, availability and reading counts come from. */
export const POWER: NumericField = NUMERIC_FIELDS[0];

/** Health states whose held time is not available time. */
export const UNAVAILABLE_HEALTH: ReadonlySet<string> = new Set(['fault', 'offline']);
