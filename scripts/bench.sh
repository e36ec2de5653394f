#!/usr/bin/env bash
# fleetpipe's performance report in one command (BENCHMARKS.md):
#
#   scripts/bench.sh            # ~15 minutes on 2 cores, plus the first build
#   scripts/bench.sh --quick    # shorter criterion runs and e2e steps
#
# 1. prepares the machine (scripts/bench-deps.sh: PostgreSQL, PostGIS, Mosquitto);
# 2. builds the release binaries;
# 3. runs the criterion micro-benchmarks (decode, validate, COPY encoding and
#    the sinks, enrichment, geofence lookup) into target/criterion;
# 4. runs the end-to-end benchmark and its peers (bench/src/bin/e2e), which
#    reads the criterion results back and writes target/e2e/{result.json,
#    summary.md, throughput.svg, latency.svg}.
#
# For step 4, PostgreSQL gets the WAL settings deploy/docker-compose.yml
# gives TimescaleDB (max_wal_size, checkpoint_timeout: see PG_WAL below);
# both take effect on reload, and the previous values are put back when the
# script ends, however it ends. With PostgreSQL's defaults (1GB, 5min), the
# sustained insert rate of the benchmark fills 1 GB of WAL every ~20 s and
# the checkpoints that follow stall the writer for hundreds of milliseconds
# (BENCHMARKS.md, "Where we stand, and what limits the rate"). The run records the settings
# it ran with in result.json and summary.md.
#
# Any further arguments go to the end-to-end benchmark (see
# `target/release/fleetpipe-e2e --help`). Benchmarks report; they never fail
# on a number.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

quick=0
for arg in "$@"; do
    if [ "$arg" = --quick ]; then quick=1; fi
done
if [ "$quick" = 1 ]; then
    criterion=(--warm-up-time 1 --measurement-time 2 --sample-size 20)
else
    criterion=(--warm-up-time 2 --measurement-time 5)
fi

./scripts/bench-deps.sh
log "building release binaries"
cargo build --release -p fleetpipe -p fleetpipe-bench --bin fleetpipe --bin fleetpipe-e2e
log "criterion micro-benchmarks"
# Named one by one: `--benches` would also run the libraries' test harness,
# which refuses criterion's options.
cargo bench -p fleetpipe-bench --bench decode_validate --bench sinks --bench enrich -- "${criterion[@]}"
cargo bench -p fleetpipe-geofence --bench lookup -- "${criterion[@]}"

# name=value pairs, as deploy/docker-compose.yml passes them to TimescaleDB.
PG_WAL=(max_wal_size=16GB checkpoint_timeout=15min)
psql_test() { psql -h 127.0.0.1 -U postgres -d test -Atqc "$1"; }
# Puts back what postgresql.auto.conf said before (or removes the entry).
restore_pg() {
    for kv in "${saved_pg[@]}"; do
        name=${kv%%=*} value=${kv#*=}
        if [ -z "$value" ]; then
            psql_test "ALTER SYSTEM RESET $name"
        else
            psql_test "ALTER SYSTEM SET $name = '$value'"
        fi
    done
    psql_test "SELECT pg_reload_conf()" >/dev/null
    log "PostgreSQL WAL settings restored"
}
saved_pg=()
for kv in "${PG_WAL[@]}"; do
    name=${kv%%=*}
    saved_pg+=("$name=$(psql_test "SELECT setting FROM pg_file_settings \
        WHERE name = '$name' AND sourcefile LIKE '%postgresql.auto.conf' AND applied")")
done
trap restore_pg EXIT
for kv in "${PG_WAL[@]}"; do
    psql_test "ALTER SYSTEM SET ${kv%%=*} = '${kv#*=}'"
done
psql_test "SELECT pg_reload_conf()" >/dev/null
log "PostgreSQL for the run: ${PG_WAL[*]}"

log "end-to-end benchmark and peers"
target/release/fleetpipe-e2e "$@"
