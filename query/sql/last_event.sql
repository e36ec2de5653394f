-- A vehicle's newest event the token may see, through vehicle_events
-- (vehicle_id, time) scanned backward.
--
-- $1      the vehicle
-- $2, $3  the time window the token may see
-- $4      scope: only events of these fences (NULL: any)
SELECT e.id, e.vehicle_id, e.type, e.time, e.data
FROM {schema}.vehicle_events e
WHERE e.vehicle_id = $1
  AND e.time >= $2 AND e.time <= $3
  AND ($4::text[] IS NULL OR e.data->>'fence_id' = ANY ($4::text[]))
ORDER BY e.time DESC, e.id DESC
LIMIT 1
