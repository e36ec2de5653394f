-- Both storage modes: leave half of every vehicle_latest page free.
--
-- vehicle_latest holds one row per vehicle and every batch with a newer ping
-- of a vehicle rewrites its row. With the default fillfactor of 100 a page
-- has no room for the new version next to the old one, so nearly every
-- update was a non-HOT update: a new entry in the primary key's B-tree, and
-- a table that grew to ~15 times its live size between vacuums (measured:
-- 8 % HOT updates, 3,969 pages for 10,000 rows). With half-full pages
-- PostgreSQL writes the new version on the same page (a HOT update: no index
-- entry, the old version pruned in place): 99 % HOT updates, 273 pages, and
-- about a quarter less time per upserted row (BENCHMARKS.md, "Sinks").
ALTER TABLE {schema}.vehicle_latest SET (fillfactor = 50);

-- The setting applies to pages written from now on; rewrite the table once
-- so the existing rows get the free space too. The table is small (one row
-- per vehicle) and migrations run before the sink writes.
CLUSTER {schema}.vehicle_latest USING vehicle_latest_pkey;
