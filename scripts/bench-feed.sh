#!/usr/bin/env bash
# Live feed fan-out (BENCHMARKS.md, "Live feed fan-out"):
#
#   scripts/bench-feed.sh                 # ~1 minute after the release build
#   scripts/bench-feed.sh --quick         # a smoke run: 100 clients, 2,000 pings/s
#   scripts/bench-feed.sh --clients 500   # further arguments go to the runner
#
# Ensures PostgreSQL on 127.0.0.1:5432 (database "test": the query API needs
# it to start), builds the release fleetpipe and runner, and runs the runner
# (bench/src/bin/feed): fleetpipe as a child process with [api.feed] and the
# file sink, the fleet simulator's 1,000 vehicles sending pings over the
# devices' WebSocket at 10,000/s, and 1,000 feed clients each subscribed to
# its own bounding box; ack → delivery latency, fleetpipe's CPU per delivered
# position and its memory per client. Writes docs/bench/feed/{summary.md,
# result.json} (fleetpipe's log and config stay in target/feed-bench).
# Benchmarks report; they never fail on a number.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

ensure_postgres
target="${CARGO_TARGET_DIR:-target}"
log "building the release fleetpipe and runner"
cargo build --release -p fleetpipe -p fleetpipe-bench --bin fleetpipe --bin fleetpipe-feed-bench
log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
log "live feed fan-out"
"$target/release/fleetpipe-feed-bench" --fleetpipe "$target/release/fleetpipe" --out target/feed-bench "$@"
mkdir -p docs/bench/feed
cp target/feed-bench/summary.md target/feed-bench/result.json docs/bench/feed/
log "written: docs/bench/feed/summary.md"
