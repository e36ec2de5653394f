-- Both storage modes: drop the (vehicle_id, ts DESC) index that 0002 (and
-- an earlier 0003) created. The unique index behind telemetry_dedupe,
-- (vehicle_id, ts, seq), already serves one vehicle's track: an equality on
-- vehicle_id with a range or an ORDER BY on ts, newest first by scanning it
-- backward. The second index only cost every inserted row another B-tree
-- insertion (BENCHMARKS.md, "Sinks").
DROP INDEX IF EXISTS {schema}.telemetry_vehicle_ts;
