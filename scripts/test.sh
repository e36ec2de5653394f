#!/usr/bin/env bash
# Runs every test of the workspace against real services on loopback.
#
# Starts PostgreSQL (127.0.0.1:5432, database "test", with PostGIS for the
# geofencing peer of the benchmarks) and Mosquitto (127.0.0.1:1883) when
# they are not running, installing them with apt-get when they are missing
# (Debian/Ubuntu, as root), and kcat (a real Kafka client used against the
# embedded mock cluster), the stock MQTT clients the conformance tests run
# (mosquitto-clients; paho-mqtt from PyPI in a virtualenv under target/),
# schemathesis (PyPI, in a virtualenv under target/) that checks the query
# API against its OpenAPI document, and the Tansu Kafka broker that the
# Kafka tests start (cargo install tansu 0.6.0 with its memory and SQLite
# storage into ~/.cargo/bin unless that build is there already), and the
# browser the live map's test drives (Debian's chromium, and playwright-core
# from npm pinned by fleetpipe/tests/browser/package-lock.json, installed
# into that folder). Then checks formatting, lints and the API docs' links, and
# runs `cargo test --workspace --no-fail-fast`, then validates
# deploy/ (scripts/check-deploy.sh). Tests never skip: a missing service
# makes them fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

# A test run builds once from scratch: incremental caches only cost disk.
export CARGO_INCREMENTAL=0
report_disk

ensure_build_deps
ensure_postgres
ensure_postgis
ensure_mosquitto
ensure_mqtt_clients
ensure_schemathesis
ensure_kcat
ensure_browser
ensure_tansu

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo doc (intra-doc links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
log "cargo test"
cargo test --workspace --no-fail-fast
log "deploy/ files"
./scripts/check-deploy.sh target/debug/fleetpipe
