-- The query API's share links, owned by fleetpipe-query (query/src/share.rs),
-- which applies this file at start when the table is missing, under the
-- schema's advisory lock (the one the sink's migrations hold). {schema} is
-- api.schema, quoted. Idempotent.
--
-- A share link lets its token read one vehicle, and of its history only
-- [created_at, expires_at]; nothing once revoked_at is set. The token itself
-- is never stored: token_sha256 is the SHA-256 of it.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.api_share_links (
    id           text        PRIMARY KEY,
    token_sha256 bytea       NOT NULL UNIQUE,
    vehicle_id   text        NOT NULL,
    -- The api.tokens name that created it.
    created_by   text        NOT NULL,
    -- Also the start of the history the link may read.
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
