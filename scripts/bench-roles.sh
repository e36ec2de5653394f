#!/usr/bin/env bash
# CPU per 1,000 pings of each role, measured separately (BENCHMARKS.md,
# "Roles: CPU per 1,000 pings"; CAPACITY.md builds on it):
#
#   scripts/bench-roles.sh                      # 300,000 pings at 5,000/s
#   RATE=8000 SECONDS_PER_RUN=90 scripts/bench-roles.sh
#
# Release binaries. Tansu 0.6.0 (memory storage) is the Kafka endpoint, in a
# process of its own; PostgreSQL is the local server (the mode it offers:
# TimescaleDB when the extension is there, else plain PostgreSQL). Two runs
# of the same simulated fleet, published by `fleetsim` over MQTT QoS 1, each
# publisher waiting for fleetpipe's {"ack":N}:
#
#   roles: gateway (embedded broker → raw topic) → enrich (1 member:
#          raw topic → telemetry/events/dead-letter topics + changelog)
#          → writer (1 member: output topics → PostgreSQL);
#   all:   the single process, PostgreSQL sink only (as the writer's).
#
# Each process's CPU (user + system, /proc/PID/stat) is read before the
# publisher starts and once the database holds every ping (so catch-up work
# is counted), and divided by the pings stored. Tansu's and the publisher's
# CPU are reported beside, not counted. Writes target/bench-roles/summary.md.
# Benchmarks report; they never fail on a number.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

# PROFILE=debug only to try the script itself out: the numbers mean nothing.
PROFILE=${PROFILE:-release}
BIN=target/$PROFILE
RATE=${RATE:-5000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-60}
COUNT=$((RATE * SECONDS_PER_RUN))
VEHICLES=${VEHICLES:-2000}
OUT=target/bench-roles
KAFKA_PORT=19092
MQTT_PORT=18883
DB_URL=postgresql://postgres@127.0.0.1:5432/test

ensure_postgres
ensure_tansu
if [ "$PROFILE" = release ]; then
    log "building release binaries"
    cargo build --release -p fleetpipe -p fleetpipe-sim --bin fleetpipe --bin fleetsim
fi
rm -rf "$OUT"
mkdir -p "$OUT"
"$BIN/fleetsim" geofences --vehicles "$VEHICLES" --seed 7 --out "$OUT/fences.geojson"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# CPU seconds (user + system) of a process so far.
cpu_s() {
    local ticks
    ticks=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

wait_ready() {
    local port=$1 i
    for i in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; then return 0; fi
        sleep 0.2
    done
    echo "process with ops port $port never became ready" >&2
    return 1
}

rows() { psql_test "SELECT count(*) FROM $1.telemetry" 2>/dev/null || echo 0; }

# Settings every process shares: ops port $1; the embedded broker if $2 = mqtt.
common() {
    if [ "${2:-}" = mqtt ]; then
        printf '[ingest.mqtt]\nmode = "embedded"\nlisten = "127.0.0.1:%s"\nlisten_v5 = "off"\n' "$MQTT_PORT"
    else
        printf '[ingest.mqtt]\nmode = "off"\n'
    fi
    cat <<EOF
[ingest.http]
listen = "127.0.0.1:0"
[ingest.rate_limit]
enabled = false
[ops]
listen = "127.0.0.1:$1"
[geofence]
file = "$PWD/$OUT/fences.geojson"
[enrich]
workers = 2
[log]
format = "json"
EOF
}

kafka() {
    cat <<EOF
[cluster]
role = "$1"
partitions = 12
replication_factor = 1
[sink.kafka]
brokers = "127.0.0.1:$KAFKA_PORT"
EOF
}

timescale() {
    cat <<EOF
[sink.timescale]
url = "$DB_URL"
schema = "$1"
EOF
}

# Starts a fleetpipe process; its pid in $started. (Not `$(start ...)`: a
# command substitution's background job is not this shell's child.)
start() {
    local name=$1 config=$2
    "$BIN/fleetpipe" run --config "$config" > "$OUT/$name.log" 2>&1 &
    started=$!
    pids+=("$started")
}

# Publishes COUNT pings of the fleet and waits for the publisher to finish.
publish() {
    "$BIN/fleetsim" publish --mqtt "127.0.0.1:$MQTT_PORT" --ack topic \
        --connections 8 --rate "$RATE" --count "$COUNT" \
        --vehicles "$VEHICLES" --seed 7 > "$OUT/$1-publisher.log" 2>&1
}

# Waits until `schema` holds `want` rows (or stops growing for 30 s).
wait_rows() {
    local schema=$1 want=$2 last=-1 same=0 now
    while :; do
        now=$(rows "$schema")
        if [ "$now" -ge "$want" ]; then return 0; fi
        if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; fi
        if [ "$same" -ge 60 ]; then echo "rows stuck at $now of $want" >&2; return 1; fi
        last=$now
        sleep 0.5
    done
}

# Pings the publisher had acknowledged (its final summary line).
acked() { grep -oE 'acked[ =:]+[0-9]+' "$1" | tail -1 | grep -oE '[0-9]+$' || echo 0; }

declare -A before after pings

run_roles() {
    log "roles: gateway → enrich → writer ($COUNT pings at $RATE/s)"
    psql_test "DROP SCHEMA IF EXISTS bench_roles CASCADE" > /dev/null
    tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ > "$OUT/tansu.log" 2>&1 &
    local tansu=$!
    pids+=("$tansu")
    wait_port "$KAFKA_PORT"
    { common 18091; kafka writer; timescale bench_roles; } > "$OUT/writer.toml"
    { common 18092; kafka enrich; } > "$OUT/enrich.toml"
    { common 18093 mqtt; kafka gateway; } > "$OUT/gateway.toml"
    local writer enrich gateway
    start writer "$OUT/writer.toml"; writer=$started; wait_ready 18091
    start enrich "$OUT/enrich.toml"; enrich=$started; wait_ready 18092
    start gateway "$OUT/gateway.toml"; gateway=$started; wait_ready 18093
    sleep 5 # the enrich member's first assignment
    for p in writer enrich gateway tansu; do before[$p]=$(cpu_s "${!p}"); done
    publish roles
    local want
    want=$(acked "$OUT/roles-publisher.log")
    wait_rows bench_roles "$want"
    for p in writer enrich gateway tansu; do after[$p]=$(cpu_s "${!p}"); done
    pings[roles]=$(rows bench_roles)
    # Bytes into Kafka per ping: raw (gateway), outputs and changelog (enrich).
    curl -s http://127.0.0.1:18093/metrics > "$OUT/gateway.metrics"
    curl -s http://127.0.0.1:18092/metrics > "$OUT/enrich.metrics"
    kill "$gateway" "$enrich" "$writer" "$tansu"
    wait "$gateway" "$enrich" "$writer" "$tansu" 2>/dev/null || true
}

run_all() {
    log "all: one process ($COUNT pings at $RATE/s)"
    psql_test "DROP SCHEMA IF EXISTS bench_all CASCADE" > /dev/null
    { common 18094 mqtt; timescale bench_all; } > "$OUT/all.toml"
    local all
    start all "$OUT/all.toml"; all=$started; wait_ready 18094
    before[all]=$(cpu_s "$all")
    publish all
    wait_rows bench_all "$(acked "$OUT/all-publisher.log")"
    after[all]=$(cpu_s "$all")
    pings[all]=$(rows bench_all)
    kill "$all"
    wait "$all" 2>/dev/null || true
}

run_roles
run_all

mode=$(psql_test "SELECT CASE WHEN count(*) > 0 THEN 'TimescaleDB' ELSE 'plain PostgreSQL' END FROM pg_available_extensions WHERE name = 'timescaledb'")
# Sum of every series of metric $1 in file $2.
metric_sum() { awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f", s }' "$2"; }
per_k() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.4f", (b - a) / (n / 1000) }'; }
{
    echo "# CPU per 1,000 pings by role"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), database: $mode."
    echo "$COUNT pings offered at $RATE/s per run, $VEHICLES vehicles, MQTT QoS 1 over 8 connections, each publisher waiting for the durable ack. Command: \`RATE=$RATE SECONDS_PER_RUN=$SECONDS_PER_RUN VEHICLES=$VEHICLES scripts/bench-roles.sh\`."
    echo
    echo "| process | pings stored | CPU s | CPU s / 1k pings |"
    echo "|---|---|---|---|"
    for p in gateway enrich writer; do
        echo "| $p | ${pings[roles]} | $(awk -v a="${before[$p]}" -v b="${after[$p]}" 'BEGIN { printf "%.2f", b - a }') | $(per_k "${before[$p]}" "${after[$p]}" "${pings[roles]}") |"
    done
    total_before=$(awk -v a="${before[gateway]}" -v b="${before[enrich]}" -v c="${before[writer]}" 'BEGIN { print a + b + c }')
    total_after=$(awk -v a="${after[gateway]}" -v b="${after[enrich]}" -v c="${after[writer]}" 'BEGIN { print a + b + c }')
    echo "| three roles together | ${pings[roles]} | $(awk -v a="$total_before" -v b="$total_after" 'BEGIN { printf "%.2f", b - a }') | $(per_k "$total_before" "$total_after" "${pings[roles]}") |"
    echo "| all (one process) | ${pings[all]} | $(awk -v a="${before[all]}" -v b="${after[all]}" 'BEGIN { printf "%.2f", b - a }') | $(per_k "${before[all]}" "${after[all]}" "${pings[all]}") |"
    echo "| (Tansu, the broker: not fleetpipe) | ${pings[roles]} | $(awk -v a="${before[tansu]}" -v b="${after[tansu]}" 'BEGIN { printf "%.2f", b - a }') | $(per_k "${before[tansu]}" "${after[tansu]}" "${pings[roles]}") |"
    raw_b=$(metric_sum fleetpipe_sink_bytes_total "$OUT/gateway.metrics")
    out_b=$(metric_sum fleetpipe_sink_bytes_total "$OUT/enrich.metrics")
    log_b=$(metric_sum fleetpipe_enrich_changelog_bytes_total "$OUT/enrich.metrics")
    log_n=$(metric_sum fleetpipe_enrich_changelog_snapshots_total "$OUT/enrich.metrics")
    n=${pings[roles]}
    echo
    echo "Kafka bytes per ping (values, before replication and compression): raw $(awk -v b="$raw_b" -v n="$n" 'BEGIN { printf "%.0f", b / n }'), outputs $(awk -v b="$out_b" -v n="$n" 'BEGIN { printf "%.0f", b / n }'), changelog $(awk -v b="$log_b" -v n="$n" 'BEGIN { printf "%.0f", b / n }') ($(awk -v s="$log_n" -v n="$n" 'BEGIN { printf "%.2f", s / n }') snapshots per ping, $(awk -v b="$log_b" -v s="$log_n" 'BEGIN { printf "%.0f", b / (s > 0 ? s : 1) }') bytes each)."
    db_b=$(psql_test "SELECT pg_total_relation_size('bench_all.telemetry')")
    echo "Database: $(awk -v b="$db_b" -v n="${pings[all]}" 'BEGIN { printf "%.0f", b / n }') bytes per telemetry row with its indexes ($mode, uncompressed)."
    echo
} > "$OUT/summary.md"
cat "$OUT/summary.md"
