-- Enrichment: per-ping facts on telemetry, and the per-vehicle state
-- snapshots enrichment keeps across restarts. Both storage modes.

-- Nullable and without defaults: a catalog-only change in PostgreSQL (no
-- table rewrite), and the one kind of new column TimescaleDB accepts on a
-- hypertable with compression enabled, even once chunks are compressed. One
-- statement per column, as TimescaleDB handles them on hypertables.
-- Rows written before this migration hold NULL in all four; the sink writes
-- '{}' (not NULL) for a ping in no fence or without flags.
--
-- fences:            ids of the geofences containing the position.
-- distance_m:        great-circle distance from the vehicle's previous ping
--                    (device time), metres; NULL for its first and late pings.
-- derived_speed_kmh: distance_m over the time since that ping, km/h; only
--                    when the ping carries no speed_kmh.
-- flags:             quality flags: 'late', 'duplicate', 'jump'.
ALTER TABLE {schema}.telemetry ADD COLUMN fences text[];
ALTER TABLE {schema}.telemetry ADD COLUMN distance_m double precision;
ALTER TABLE {schema}.telemetry ADD COLUMN derived_speed_kmh double precision;
ALTER TABLE {schema}.telemetry ADD COLUMN flags text[];

-- One snapshot of enrichment's state per vehicle, written and read by the
-- enrichment stage (not by the sinks).
CREATE TABLE {schema}.vehicle_state (
    vehicle_id text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
