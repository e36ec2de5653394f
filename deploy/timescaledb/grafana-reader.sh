#!/usr/bin/env bash
# Creates grafana_reader, the read-only role Grafana's data source uses
# (deploy/grafana/provisioning/datasources/fleetpipe.yaml), in the Compose
# TimescaleDB. Mounted into /docker-entrypoint-initdb.d by
# deploy/docker-compose.yml, so the image runs it once, when it initialises
# an empty data volume (for an existing volume, run the SQL below by hand).
# The tables do not exist yet (the writers create them with their
# migrations, as $POSTGRES_USER): default privileges grant SELECT on every
# table and view that role creates in the schema public, the continuous
# aggregate telemetry_1m included.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" \
    -v reader_password="${FLEETPIPE_GRAFANA_DB_PASSWORD:?set FLEETPIPE_GRAFANA_DB_PASSWORD}" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
ALTER ROLE grafana_reader SET default_transaction_read_only = on;
ALTER ROLE grafana_reader SET statement_timeout = '30s';
GRANT CONNECT ON DATABASE :"db" TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT ON TABLES TO grafana_reader;
SQL
