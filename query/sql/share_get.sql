-- DELETE /v1/share-links/{id}: the link's vehicle and creator, to check
-- that the caller may revoke it.
SELECT vehicle_id, created_by FROM {schema}.api_share_links WHERE id = $1
