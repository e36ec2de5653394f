-- Both storage modes: the indexes the query API's event lists need
-- (query/sql/events.sql). With a vehicle, vehicle_events (vehicle_id, time)
-- serves; these two serve the lists without one.
--
-- GET /v1/events and /v1/trips across the fleet walk events in (time, id)
-- order from a cursor: without this index every page would sort the whole
-- table.
CREATE INDEX vehicle_events_time_id ON {schema}.vehicle_events (time, id);

-- GET /v1/events?fence=F, and fence-scoped tokens: the events naming a
-- fence, in (time, id) order. Partial: most events (motion, battery,
-- connectivity, state) name no fence and are not indexed here.
CREATE INDEX vehicle_events_fence_time ON {schema}.vehicle_events ((data->>'fence_id'), time, id)
    WHERE data ? 'fence_id';
