-- POST /v1/share-links.
INSERT INTO {schema}.api_share_links (id, token_sha256, vehicle_id, created_by, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
