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
# gives TimescaleDB (max_wal_size, checkpoint_timeout: see
# use_bench_wal_settings in scripts/lib/services.sh);
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

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

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

use_bench_wal_settings

log "end-to-end benchmark and peers"
target/release/fleetpipe-e2e "$@"
