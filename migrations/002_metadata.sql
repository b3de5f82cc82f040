-- Nodes: the sites the VPP aggregates. Columns hold what queries filter, sort or compute on;
-- `doc` holds the whole node document as the API returns it (minus version and timestamps).
CREATE TABLE nodes (
  node_id                     text PRIMARY KEY,
  type                        text NOT NULL CHECK (type IN ('solar','wind','battery','data_center','ev_charging','chp','hydro','demand_response','other')),
  status                      text NOT NULL CHECK (status IN ('active','inactive','maintenance','decommissioned')),
  capacity_kw                 double precision NOT NULL CHECK (capacity_kw > 0),
  storage_capacity_kwh        double precision CHECK (storage_capacity_kwh >= 0),
  lat                         double precision CHECK (lat BETWEEN -90 AND 90),
  lon                         double precision CHECK (lon BETWEEN -180 AND 180),
  timezone                    text NOT NULL DEFAULT 'UTC',
  telemetry_interval_seconds  integer NOT NULL DEFAULT 60 CHECK (telemetry_interval_seconds BETWEEN 1 AND 86400),
  doc                         jsonb NOT NULL,
  version                     integer NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at                  timestamptz NOT NULL DEFAULT now(),
  updated_at                  timestamptz NOT NULL DEFAULT now()
);
-- Lists page by node_id in bytewise order (COLLATE "C"), whatever the database's default collation.
CREATE INDEX nodes_status_id ON nodes (status, node_id COLLATE "C");
CREATE INDEX nodes_type_status_id ON nodes (type, status, node_id COLLATE "C");
CREATE INDEX nodes_type_id ON nodes (type, node_id COLLATE "C");
-- Bounding-box prefilter for the great-circle `nearby` query.
CREATE INDEX nodes_lat_lon ON nodes (lat, lon) WHERE lat IS NOT NULL;

-- Every version of every node: the merge patch that made it and the document after it.
CREATE TABLE node_history (
  node_id     text NOT NULL REFERENCES nodes (node_id),
  version     integer NOT NULL,
  patch       jsonb,
  doc         jsonb NOT NULL,
  changed_at  timestamptz NOT NULL DEFAULT now(),
  changed_by  text,
  PRIMARY KEY (node_id, version)
);
