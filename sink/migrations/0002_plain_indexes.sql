-- Plain PostgreSQL only (skipped when TimescaleDB is active, whose chunks
-- already partition by time).

-- Time-range scans over an append-mostly table: a BRIN index is tiny and
-- cheap to maintain because rows arrive roughly in ts order.
CREATE INDEX telemetry_ts_brin ON {schema}.telemetry USING brin (ts);

-- One vehicle's track, newest first.
CREATE INDEX telemetry_vehicle_ts ON {schema}.telemetry (vehicle_id, ts DESC);
