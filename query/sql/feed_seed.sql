-- The live feed's latest-position table at a read node's start: the newest
-- positions of at most $1 vehicles (api.feed.max_vehicles), newest first.
-- Once per start: a scan of vehicle_latest (one row per vehicle) and a
-- top-N sort.
SELECT vehicle_id, ts, lat, lon, speed_kmh, heading_deg, soc_pct, charging, ignition, fences
FROM {schema}.vehicle_latest
ORDER BY ts DESC
LIMIT $1
