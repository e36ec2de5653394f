-- GET /v1/fences: how many vehicles' latest ping is inside each fence (the
-- fences column of vehicle_latest, written by the sink's upsert).
--
-- $1      scope: count only these vehicles (NULL: all)
SELECT f.fence_id, count(*) AS vehicles
FROM {schema}.vehicle_latest l, unnest(l.fences) AS f (fence_id)
WHERE ($1::text[] IS NULL OR l.vehicle_id = ANY ($1::text[]))
GROUP BY f.fence_id
