-- TimescaleDB only, re-applied on every start (not versioned) so changes of
-- sink.timescale.compress_after and sink.timescale.retention take effect:
-- add_*_policy(if_not_exists => TRUE) keeps an existing policy with a
-- different interval, so each policy is removed and added again.
-- `{compress_after}` and `{retention}` are interval literals.

SELECT remove_compression_policy('{schema}.telemetry', if_exists => TRUE);
SELECT add_compression_policy('{schema}.telemetry', compress_after => {compress_after});

SELECT remove_retention_policy('{schema}.telemetry', if_exists => TRUE);
SELECT add_retention_policy('{schema}.telemetry', drop_after => {retention});
