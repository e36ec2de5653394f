-- TimescaleDB 2.x only: applied when the extension is active, never in
-- plain PostgreSQL mode. Runs in one transaction, so the continuous
-- aggregate is created WITH NO DATA (WITH DATA cannot run in a transaction
-- block); its refresh policy fills it.

-- Daily chunks. migrate_data moves rows written in plain mode before
-- TimescaleDB was enabled.
SELECT create_hypertable(
    '{schema}.telemetry',
    'ts',
    chunk_time_interval => INTERVAL '1 day',
    if_not_exists => TRUE,
    migrate_data => TRUE
);

-- Chunks are time-bounded already; the plain-mode BRIN index (if this
-- database started in plain mode) only costs writes.
DROP INDEX IF EXISTS {schema}.telemetry_ts_brin;
-- One vehicle's track is served by the telemetry_dedupe index (vehicle_id,
-- ts, seq), scanned backward for newest first; see 0005.

-- Compressed chunks keep one vehicle's rows together in ts order. seq is in
-- the order-by so every column of the dedupe key is a segment-by or
-- order-by column, which TimescaleDB uses to check the key on inserts into
-- compressed chunks (late data).
ALTER TABLE {schema}.telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'vehicle_id',
    timescaledb.compress_orderby = 'ts DESC, seq DESC'
);

-- Per vehicle and minute. distance_km is max(odometer) - min(odometer)
-- within the bucket: a haversine sum over consecutive points needs row
-- order, which a continuous aggregate cannot express. It is NULL for
-- vehicles that report no odometer. last_soc_pct is the soc_pct of the
-- newest ping of the bucket (NULL if that ping carried none).
CREATE MATERIALIZED VIEW {schema}.telemetry_1m
WITH (timescaledb.continuous) AS
SELECT
    vehicle_id,
    time_bucket(INTERVAL '1 minute', ts) AS bucket,
    count(*) AS pings,
    max(speed_kmh) AS max_speed_kmh,
    avg(speed_kmh) AS avg_speed_kmh,
    last(soc_pct, ts) AS last_soc_pct,
    max(odometer_km) - min(odometer_km) AS distance_km
FROM {schema}.telemetry
GROUP BY vehicle_id, bucket
WITH NO DATA;

-- Refresh the last day every minute, leaving out the still-open minute.
SELECT add_continuous_aggregate_policy(
    '{schema}.telemetry_1m',
    start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute',
    if_not_exists => TRUE
);
