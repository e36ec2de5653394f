#!/usr/bin/env bash
# fleetpipe's soak run (BENCHMARKS.md, "Soak"):
#
#   scripts/soak.sh                   # 60 minutes, plus the ramp and the build
#   scripts/soak.sh --soak-minutes 5  # a short one
#
# fleetpipe (release binary) on its embedded broker with both sinks (the
# local PostgreSQL, the embedded Kafka mock cluster), driven over MQTT by the
# simulator at half the saturated rate, which a ramp measures first in the
# same process. Samples memory, file descriptors, queue depths and the
# database pool every 10 s and writes target/soak/{soak.json, soak.md,
# soak.svg}. PostgreSQL runs with the benchmark's WAL settings, put back at
# the end. An hour at ~25k pings/s writes ~90 M rows (~25 GB with indexes);
# the run drops its schema at the end. Further arguments go to
# `target/release/fleetpipe-e2e` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

minutes=(--soak-minutes 60)
for arg in "$@"; do
    if [ "$arg" = --soak-minutes ]; then minutes=(); fi
done

./scripts/bench-deps.sh
log "building release binaries"
cargo build --release -p fleetpipe -p fleetpipe-bench --bin fleetpipe --bin fleetpipe-e2e
use_bench_wal_settings
log "soak"
target/release/fleetpipe-e2e --out target/soak "${minutes[@]}" "$@"
