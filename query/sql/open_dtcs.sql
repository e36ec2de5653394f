-- The diagnostic trouble codes open on a vehicle: each code whose latest
-- diagnostics event is diagnostics.dtc_set. Not the latest ping's dtcs:
-- enrichment keeps a code active until it has not been reported for
-- enrich.diagnostics.clear_after, so a ping without it does not close it,
-- and its events are what is true. Read through vehicle_events
-- (vehicle_id, time).
--
-- $1      the vehicle
-- $2, $3  the time window the token may see
SELECT code, time
FROM (
    SELECT DISTINCT ON (e.data->>'code') e.data->>'code' AS code, e.type, e.time
    FROM {schema}.vehicle_events e
    WHERE e.vehicle_id = $1
      AND e.type IN ('diagnostics.dtc_set', 'diagnostics.dtc_cleared')
      AND e.time >= $2 AND e.time <= $3
    ORDER BY e.data->>'code', e.time DESC, e.id DESC
) latest
WHERE type = 'diagnostics.dtc_set' AND code IS NOT NULL
ORDER BY code
