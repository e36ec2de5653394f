#!/usr/bin/env bash
# Runs every test of the workspace against real services on loopback.
#
# Starts PostgreSQL (127.0.0.1:5432, database "test") and Mosquitto
# (127.0.0.1:1883) when they are not running, installing them with apt-get
# when they are missing (Debian/Ubuntu, as root), and kcat (a real Kafka
# client used against the embedded mock cluster). Then checks formatting and
# lints and runs `cargo test --workspace --no-fail-fast`. Tests never skip: a missing
# service makes them fail.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
    echo "error: nothing listens on 127.0.0.1:$1 after 30 s ($2)" >&2
    exit 1
}

apt_updated=0
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "error: $* missing and not root: install it (apt-get install $*) and run again" >&2
        exit 1
    fi
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null; then
        log "installing PostgreSQL"
        apt_install postgresql
    fi
    if ! port_open 5432; then
        log "starting PostgreSQL"
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_port 5432 PostgreSQL
    fi
    # Trust auth on loopback, as on the development machines; the tests use
    # postgresql://postgres@127.0.0.1:5432/test.
    if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
        local hba
        hba=$(su postgres -c "psql -tAc 'show hba_file'")
        if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
            sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
            su postgres -c "psql -qc 'select pg_reload_conf()'" >/dev/null
        fi
        su postgres -c "psql -tAc \"select 1 from pg_database where datname = 'test'\"" | grep -q 1 ||
            su postgres -c "createdb test"
    fi
    psql -h 127.0.0.1 -U postgres -d test -qc 'select 1' >/dev/null
}

ensure_mosquitto() {
    if ! command -v mosquitto >/dev/null; then
        log "installing Mosquitto"
        apt_install mosquitto mosquitto-clients
    fi
    if ! port_open 1883; then
        log "starting Mosquitto"
        mosquitto -d -c /etc/mosquitto/mosquitto.conf
        wait_port 1883 Mosquitto
    fi
}

ensure_kcat() {
    if ! command -v kcat >/dev/null; then
        log "installing kcat"
        apt_install kcat
    fi
}

ensure_postgres
ensure_mosquitto
ensure_kcat

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace --no-fail-fast
