-- The fences table (geofence.postgres): one row per fence; no PostGIS
-- needed. {table} stands for geofence.postgres.table as a quoted identifier.
-- Each column means what the GeoJSON feature property of the same name
-- means; geometry is the feature's geometry (Polygon, MultiPolygon, or a
-- Point with radius_m).
CREATE TABLE IF NOT EXISTS {table} (
    id              text PRIMARY KEY,
    name            text,
    kind            text,
    speed_limit_kmh double precision,
    dwell_s         integer,
    arrival         boolean NOT NULL DEFAULT false,
    radius_m        double precision,   -- required when geometry is a Point
    geometry        jsonb NOT NULL      -- a GeoJSON geometry object
);
