#!/usr/bin/env bash
# fleetpipe's performance report in one command (BENCHMARKS.md):
#
#   scripts/bench.sh            # ~30 minutes on 2 cores
#   scripts/bench.sh --quick    # shorter criterion runs and e2e steps, ~12 minutes
#
# 1. prepares the machine (scripts/bench-deps.sh: PostgreSQL, PostGIS, Mosquitto);
# 2. builds the release binaries;
# 3. runs the criterion micro-benchmarks (decode, validate, COPY encoding and
#    the sinks, enrichment, geofence lookup) into target/criterion;
# 4. runs the end-to-end benchmark and its peers (bench/src/bin/e2e), which
#    reads the criterion results back and writes target/e2e/{result.json,
#    summary.md, throughput.svg, latency.svg}.
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
log "end-to-end benchmark and peers"
target/release/fleetpipe-e2e "$@"
