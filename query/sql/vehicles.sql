-- GET /v1/vehicles: one page of the latest state of vehicles, in vehicle_id
-- order (the primary key, walked from the cursor). The state column is
-- state.sql's expression.
--
-- $1, $2  state.sql's parameters
-- $3      the cursor: the last vehicle_id of the previous page ('' first)
-- $4      scope: the vehicles the token may see (NULL: any)
-- $5      scope: the fences the token may see vehicles in (NULL: any)
-- $6..$9  bbox: min lon, min lat, max lon, max lat (NULL: no bbox)
-- $10     fence: vehicles whose latest ping is inside it (NULL: any)
-- $11     stale_after: latest ping older than this instant (NULL: any)
-- $12     state (NULL: any)
-- $13     page size plus one (the extra row says whether a next page exists)
SELECT vehicle_id, ts, lat, lon, speed_kmh, heading_deg, soc_pct, charging, ignition, fences, state
FROM (
    SELECT l.vehicle_id, l.ts, l.lat, l.lon, l.speed_kmh, l.heading_deg, l.soc_pct,
           l.charging, l.ignition, l.fences, {state} AS state
    FROM {schema}.vehicle_latest l
    WHERE l.vehicle_id > $3
      AND ($4::text[] IS NULL OR l.vehicle_id = ANY ($4::text[]))
      AND ($5::text[] IS NULL OR l.fences && $5::text[])
      AND ($6::float8 IS NULL OR (l.lon BETWEEN $6 AND $8 AND l.lat BETWEEN $7 AND $9))
      AND ($10::text IS NULL OR l.fences @> ARRAY[$10::text])
      AND ($11::timestamptz IS NULL OR l.ts < $11)
) v
WHERE ($12::text IS NULL OR v.state = $12)
ORDER BY v.vehicle_id
LIMIT $13
