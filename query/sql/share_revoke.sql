-- DELETE /v1/share-links/{id}: revoke (again is a no-op).
UPDATE {schema}.api_share_links SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL
