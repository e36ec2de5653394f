-- Both storage modes: the dedupe key of telemetry holds no NULL.
--
-- Until now a ping without a sequence number was stored with seq NULL, and
-- telemetry_dedupe (vehicle_id, ts, seq) relied on NULLS NOT DISTINCT to
-- treat two such pings as the same. TimescaleDB does not honour NULLS NOT
-- DISTINCT against compressed chunks (2.28.3: INSERT ... ON CONFLICT DO
-- NOTHING re-inserts every replayed ping without seq whose chunk is
-- compressed), so a key column that may be NULL is a key an engine can get
-- wrong. From now on a ping without seq is stored with seq = -1: device
-- sequence numbers are 0 ... 2^63-1 in this column (larger ones are
-- refused as db_refused dead letters), so -1 is never a real one, and such
-- a ping dedupes on (vehicle_id, ts) by plain equality.
--
-- In TimescaleDB mode the statements of 0007_telemetry_seq_not_null.timescaledb
-- run first, in the same transaction: they stop the compression policy (the
-- start re-adds it right after the migrations) and decompress every
-- compressed chunk, so what follows runs on plain rows.
--
-- Rows written before: seq NULL becomes -1 (the only rows this UPDATE
-- touches). The constraint stays as it is: over a column without NULLs,
-- NULLS NOT DISTINCT changes nothing, and rebuilding the index would only
-- cost time.
UPDATE {schema}.telemetry SET seq = -1 WHERE seq IS NULL;

-- A writer that leaves seq out stores "no sequence number", not NULL.
ALTER TABLE {schema}.telemetry ALTER COLUMN seq SET DEFAULT -1;

-- From now on a NULL seq is refused rather than stored.
ALTER TABLE {schema}.telemetry ALTER COLUMN seq SET NOT NULL;
