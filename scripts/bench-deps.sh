#!/usr/bin/env bash
# Prepares this machine for the end-to-end benchmark (scripts/bench.sh):
# PostgreSQL on 127.0.0.1:5432 (database "test", trust auth on loopback) with
# the PostGIS package of its major version (postgresql-<major>-postgis-3) and
# the `postgis` extension in database "test" for the geofencing peer, and
# Mosquitto on 127.0.0.1:1883 for the relay peer. scripts/test.sh does the
# same (the peers have tests) plus kcat.
#
# Idempotent: installs with apt-get (Debian/Ubuntu, as root) only what is
# missing, starts only what is not listening, and changes nothing otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

ensure_build_deps
ensure_postgres
ensure_postgis
ensure_mosquitto
log "PostgreSQL listens on 127.0.0.1:5432, Mosquitto on 127.0.0.1:1883"
