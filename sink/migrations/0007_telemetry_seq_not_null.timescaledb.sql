-- TimescaleDB only: runs before 0007_telemetry_seq_not_null.sql, in the same
-- transaction, when the schema is in TimescaleDB mode.
--
-- As TimescaleDB's documentation asks before decompressing chunks, stop the
-- compression policy first, so it cannot compress a chunk again while the
-- migration runs. The policy is not gone for long: every start re-applies
-- R__timescaledb_policies.sql after the migrations, which adds it again with
-- sink.timescale.compress_after, and its job then compresses the
-- decompressed chunks again over its next runs.
SELECT remove_compression_policy('{schema}.telemetry', if_exists => TRUE);

-- Decompress every compressed chunk of telemetry (the documented form; the
-- second argument, if_compressed, skips chunks that are not compressed), so
-- the UPDATE and ALTER TABLE of 0007 work on plain rows. This needs the
-- disk space of the decompressed data and takes a while on a large table:
-- it happens once, on the first start of this release.
SELECT decompress_chunk(c, true) FROM show_chunks('{schema}.telemetry') AS c;
