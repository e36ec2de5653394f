-- GET /v1/vehicles/{id}: one vehicle's latest state, if the token may see
-- it. The state column is state.sql's expression.
--
-- $1, $2  state.sql's parameters
-- $3      the vehicle
-- $4      scope: the vehicles the token may see (NULL: any)
-- $5      scope: the fences the token may see vehicles in (NULL: any)
SELECT l.vehicle_id, l.ts, l.lat, l.lon, l.speed_kmh, l.heading_deg, l.soc_pct,
       l.charging, l.ignition, l.fences, {state} AS state
FROM {schema}.vehicle_latest l
WHERE l.vehicle_id = $3
  AND ($4::text[] IS NULL OR l.vehicle_id = ANY ($4::text[]))
  AND ($5::text[] IS NULL OR l.fences && $5::text[])
