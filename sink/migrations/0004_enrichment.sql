-- Enrichment: per-ping facts on telemetry. Both storage modes.

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

-- Earlier versions of this migration also created {schema}.vehicle_state,
-- enrichment's per-vehicle state snapshots. That table belongs to the
-- enrichment stage, which now creates it itself (enrich/sql/vehicle_state.sql,
-- CREATE TABLE IF NOT EXISTS): in schemas this migration was applied to
-- before, the table it created is the same table and stays.
