-- GET /v1/events and GET /v1/trips: one page of events in (time, id) order,
-- walked from the cursor. With a vehicle: vehicle_events (vehicle_id, time);
-- with a fence: vehicle_events_fence_time; otherwise vehicle_events_time_id
-- (migration 0009_api_event_indexes).
--
-- $1      vehicle_id (NULL: any)
-- $2      type (NULL: any)
-- $3      fence: events whose data names it as fence_id (NULL: any)
-- $4, $5  time range [from, to): the request's, narrowed to what the token
--         may see, and from raised to the cursor's time
-- $6, $7  the cursor: the last (time, id) of the previous page
-- $8      scope: the vehicles the token may see (NULL: any)
-- $9      scope: only events of these fences (NULL: any)
-- $10     page size plus one
SELECT e.id, e.vehicle_id, e.type, e.time, e.data
FROM {schema}.vehicle_events e
WHERE ($1::text IS NULL OR e.vehicle_id = $1)
  AND ($2::text IS NULL OR e.type = $2)
  AND ($3::text IS NULL OR e.data->>'fence_id' = $3)
  -- Implied by the two fence conditions, spelt out so that the planner may
  -- use the partial index vehicle_events_fence_time.
  AND (($3::text IS NULL AND $9::text[] IS NULL) OR e.data ? 'fence_id')
  AND e.time >= $4 AND e.time < $5
  AND (e.time, e.id) > ($6::timestamptz, $7::text)
  AND ($8::text[] IS NULL OR e.vehicle_id = ANY ($8::text[]))
  AND ($9::text[] IS NULL OR e.data->>'fence_id' = ANY ($9::text[]))
ORDER BY e.time, e.id
LIMIT $10
