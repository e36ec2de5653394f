-- Enrichment's per-vehicle state snapshots: one row per vehicle, written at
-- every checkpoint (the vehicles changed since the last one) and read back at
-- start, so a restart neither forgets which vehicles are inside which fences
-- nor re-emits their enter events. Owned by the enrichment stage
-- (enrich/src/store.rs), which applies this file at start when the table is
-- missing, under the schema's advisory lock (the one the TimescaleDB sink's
-- migrations hold). {schema} is the configured schema, quoted.
--
-- Idempotent, and the same table the sink's migration 0004_enrichment created
-- in earlier versions: in a schema that has it, nothing changes.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.vehicle_state (
    vehicle_id text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
