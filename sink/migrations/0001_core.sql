-- fleetpipe core schema: plain PostgreSQL 15+ and the base of the
-- TimescaleDB layout. `{schema}` is replaced by the configured schema as a
-- quoted identifier.

-- One row per accepted ping. Dedupe key: a replayed ping (same vehicle,
-- device time and sequence number, or the same vehicle and device time
-- without a sequence number) is skipped by INSERT ... ON CONFLICT DO NOTHING.
-- The key includes ts, so it stays valid on a hypertable partitioned by ts.
CREATE TABLE {schema}.telemetry (
    vehicle_id   text             NOT NULL,
    ts           timestamptz      NOT NULL,
    seq          bigint,
    received_at  timestamptz      NOT NULL,
    source       text             NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    alt_m        double precision,
    speed_kmh    double precision,
    heading_deg  double precision,
    accuracy_m   double precision,
    soc_pct      double precision,
    battery_v    double precision,
    charging     boolean,
    odometer_km  double precision,
    ignition     boolean,
    -- The highest-resolution H3 cell of the position, or NULL.
    h3_cell      bigint,
    dtcs         text[]           NOT NULL DEFAULT '{}',
    attrs        jsonb            NOT NULL DEFAULT '{}',
    geofence_ids text[]           NOT NULL DEFAULT '{}',
    CONSTRAINT telemetry_dedupe UNIQUE NULLS NOT DISTINCT (vehicle_id, ts, seq)
);

-- Derived vehicle events (trips, geofence transitions, ...), filled by a
-- later stage. `id` is deterministic, so replays are idempotent.
CREATE TABLE {schema}.vehicle_events (
    id          text        PRIMARY KEY,
    vehicle_id  text        NOT NULL,
    type        text        NOT NULL,
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    data        jsonb       NOT NULL
);
CREATE INDEX vehicle_events_vehicle_time ON {schema}.vehicle_events (vehicle_id, time);

-- The newest ping per vehicle by device time. Upserted with every batch;
-- an older ping never replaces a newer one.
CREATE TABLE {schema}.vehicle_latest (
    vehicle_id  text             PRIMARY KEY,
    ts          timestamptz      NOT NULL,
    seq         bigint,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   double precision,
    heading_deg double precision,
    soc_pct     double precision,
    charging    boolean,
    ignition    boolean,
    h3_cell     bigint,
    updated_at  timestamptz      NOT NULL DEFAULT now()
);

-- Refused input (reason = a wire-contract reject reason) and pings the
-- database refused for good (reason = 'db_refused', raw = the record as
-- JSON, detail = PostgreSQL's error).
CREATE TABLE {schema}.dead_letters (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL,
    source      text        NOT NULL,
    vehicle_id  text,
    topic       text,
    raw         bytea       NOT NULL
);
CREATE INDEX dead_letters_received_at ON {schema}.dead_letters (received_at);
