-- The one place a vehicle's state is derived (GET /v1/vehicles, its
-- `state` filter, and GET /v1/vehicles/{id}): an expression over a
-- vehicle_latest row `l`, spliced into the queries where they say so.
--
--   offline   its latest ping (device time) is older than api.offline_after
--             ($1 is now minus api.offline_after)
--   charging  else, when that ping says it is charging
--   moving    else, when that ping's speed is at least api.moving_speed_kmh ($2)
--   parked    otherwise (no speed reported counts as standing)
--
-- From the latest ping alone, so it can be filtered on in SQL. Enrichment's
-- own overall state (vehicle.state_changed) also knows `idle` and trips; this
-- one is what a map colours a vehicle by.
CASE
    WHEN l.ts < $1 THEN 'offline'
    WHEN l.charging THEN 'charging'
    WHEN l.speed_kmh >= $2 THEN 'moving'
    ELSE 'parked'
END
