-- A presented share token: the link it belongs to, if neither revoked nor
-- expired at $2 (through the unique index on token_sha256).
SELECT id, vehicle_id, created_at, expires_at
FROM {schema}.api_share_links
WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > $2
