-- Every fence of the table, ordered by id, in the columns of FenceRow.
-- The casts accept compatible column types (real, bigint, json, ...), so a
-- table made by hand need not match fence_table.sql exactly.
SELECT id::text, name::text, kind::text, speed_limit_kmh::float8, dwell_s::int8,
       coalesce(arrival, false), radius_m::float8, geometry::jsonb
FROM {table}
ORDER BY id
