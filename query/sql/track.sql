-- GET /v1/vehicles/{id}/track: a vehicle's pings in [from, to), oldest
-- first, through the dedupe key's index telemetry (vehicle_id, ts, seq).
--
-- $1      the vehicle
-- $2, $3  [from, to), narrowed to what the token may see
-- $4      scope: only pings inside these fences (NULL: any)
-- $5      api.max_track_rows plus one (more is refused: narrow the range)
SELECT t.ts, t.lat, t.lon, t.speed_kmh
FROM {schema}.telemetry t
WHERE t.vehicle_id = $1
  AND t.ts >= $2 AND t.ts < $3
  AND ($4::text[] IS NULL OR t.fences && $4::text[])
ORDER BY t.ts, t.seq
LIMIT $5
