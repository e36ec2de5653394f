#!/usr/bin/env bash
# Query API latency (BENCHMARKS.md, "Query API latency"):
#
#   scripts/bench-query.sh                     # ~3 minutes after the release build
#   scripts/bench-query.sh --iterations 500    # further arguments go to the runner
#
# Ensures PostgreSQL on 127.0.0.1:5432 (database "test"), builds the release
# runner and runs it (bench/src/bin/query): it loads a fresh schema with
# fleetpipe's migrations (one vehicle's day at 1 Hz among 1,000,000 other
# telemetry rows, 100,000 vehicles in vehicle_latest), serves fleetpipe-query's
# router over HTTP on 127.0.0.1, and times the 24 h track and a bounding box
# of the latest states, each through the API and as its SQL alone, in the same
# run, with the EXPLAIN (ANALYZE, BUFFERS) plans. The database mode is the
# server's: TimescaleDB when the extension is there, else plain PostgreSQL.
# Writes docs/bench/query/{summary.md,result.json,explain-*.txt}.
# Benchmarks report; they never fail on a number.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

ensure_postgres
log "building the release runner"
cargo build --release -p fleetpipe-bench --bin fleetpipe-query-bench
log "query API latency"
"${CARGO_TARGET_DIR:-target}/release/fleetpipe-query-bench" --out docs/bench/query "$@"
log "written: docs/bench/query/summary.md"
