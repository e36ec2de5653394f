# Shared by scripts/test.sh and scripts/bench-deps.sh (sourced): make sure
# the services fleetpipe's tests and benchmarks talk to run on loopback,
# installing what is missing with apt-get (Debian/Ubuntu, as root), or with
# cargo install for Tansu (not packaged by Debian), and changing nothing
# that already works.

log() { printf '==> %s\n' "$*"; }

# A cold build of the workspace and its tests takes ~10 GB under target/;
# say how much room there is, so "No space left on device" from the linker
# is not the first sign.
report_disk() {
    local free_kb
    free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
    log "disk: $((free_kb / 1024 / 1024)) GiB free where target/ is"
    if [ "$free_kb" -lt $((12 * 1024 * 1024)) ]; then
        log "warning: under 12 GiB free; the build may run out of disk"
    fi
}

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

# Whether a Debian package is installed.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_postgis() {
    # The package must match the running server's major version, e.g.
    # postgresql-15-postgis-3 for PostgreSQL 15.
    local major package
    major=$(psql -h 127.0.0.1 -U postgres -d test -tAc 'show server_version_num')
    major=$((major / 10000))
    package="postgresql-${major}-postgis-3"
    if ! installed "$package"; then
        log "installing $package"
        apt_install "$package"
    fi
    psql -h 127.0.0.1 -U postgres -d test -qc 'SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS postgis' >/dev/null
    log "PostGIS $(psql -h 127.0.0.1 -U postgres -d test -tAc 'select postgis_lib_version()') in database test"
}

# Stock MQTT clients the conformance tests (fleetpipe/tests/mqtt_conformance.rs)
# drive the embedded broker with: Debian's mosquitto-clients, and paho-mqtt
# from PyPI in a virtualenv where fleetpipe/tests/common/stock_clients.rs
# looks for it (the target directory's tmp/).
PAHO_MQTT_VERSION=2.2.0
ensure_mqtt_clients() {
    if ! command -v mosquitto_sub >/dev/null || ! command -v mosquitto_pub >/dev/null; then
        log "installing mosquitto-clients"
        apt_install mosquitto-clients
    fi
    local venv="${CARGO_TARGET_DIR:-target}/tmp/paho-mqtt-$PAHO_MQTT_VERSION"
    if ! "$venv/bin/python" -c 'import paho.mqtt' 2>/dev/null; then
        log "installing paho-mqtt $PAHO_MQTT_VERSION (PyPI)"
        command -v python3 >/dev/null || apt_install python3
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }
        "$venv/bin/pip" install -q "paho-mqtt==$PAHO_MQTT_VERSION"
    fi
}

# schemathesis, the property-based API tester from PyPI that
# fleetpipe/tests/api_schema.rs runs against the query API's OpenAPI
# document, in a virtualenv under the target directory's tmp/ (where the
# test also looks). Exports SCHEMATHESIS as the executable it checked.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
    local venv="${CARGO_TARGET_DIR:-target}/tmp/schemathesis-$SCHEMATHESIS_VERSION"
    if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
        log "installing schemathesis $SCHEMATHESIS_VERSION (PyPI)"
        command -v python3 >/dev/null || apt_install python3
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }
        "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    SCHEMATHESIS="$(cd "$venv/bin" && pwd)/schemathesis"
    export SCHEMATHESIS
}

# The browser fleetpipe/tests/map_page.rs drives: Debian's Chromium
# (/usr/bin/chromium; Playwright's own browser download cannot run here)
# and playwright-core from npm, pinned by fleetpipe/tests/browser's
# package-lock.json, into that folder's node_modules (ignored by git).
ensure_browser() {
    if [ ! -x /usr/bin/chromium ]; then
        log "installing chromium"
        apt_install chromium
    fi
    if ! command -v npm >/dev/null; then
        log "installing nodejs and npm"
        apt_install nodejs npm
    fi
    local dir=fleetpipe/tests/browser
    local want have
    want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packages"]["node_modules/playwright-core"]["version"])' "$dir/package-lock.json")
    have=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$dir/node_modules/playwright-core/package.json" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        log "installing playwright-core $want (npm ci in $dir)"
        (cd "$dir" && npm ci --no-audit --no-fund --silent)
    fi
}

ensure_kcat() {
    if ! command -v kcat >/dev/null; then
        log "installing kcat"
        apt_install kcat
    fi
}

# Tansu, a Kafka-compatible broker from crates.io, which the tests that need
# a broker in a process of its own start on a port of their own
# (fleetpipe-kafka's test_support::Tansu, which runs $TANSU if set). Built
# with cargo install only when the binary does not already report
# $TANSU_VERSION, so a machine (or CI runner) that has it reuses it; the
# build takes minutes. Exports TANSU as the binary it checked, so the tests
# run that one whatever else is on PATH.
TANSU_VERSION=0.6.0
ensure_tansu() {
    local tansu
    tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
    if [ "$("$tansu" --version 2>/dev/null)" != "tansu $TANSU_VERSION" ] || ! tansu_has_features; then
        log "installing tansu $TANSU_VERSION with $TANSU_FEATURES (cargo install: takes minutes)"
        cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
            --features "$TANSU_FEATURES"
        tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    fi
    export TANSU="$tansu"
}

# dynostore: in-memory storage (most tests); libsql: SQLite storage that
# outlives the process (the broker-restart tests).
TANSU_FEATURES=dynostore,libsql

# Whether cargo's record of installed crates says tansu was built with
# every feature of TANSU_FEATURES (a binary from an earlier install may
# lack libsql).
tansu_has_features() {
    python3 - "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" "$TANSU_VERSION" "$TANSU_FEATURES" <<'PY'
import json, sys
path, version, wanted = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
try:
    installs = json.load(open(path))["installs"]
except (OSError, ValueError, KeyError):
    sys.exit(1)
for package, install in installs.items():
    if package.startswith(f"tansu {version} ") and wanted <= set(install.get("features", [])):
        sys.exit(0)
sys.exit(1)
PY
}

# Headers and libraries the build links against: OpenSSL for librdkafka's
# TLS/SASL (rdkafka's `ssl` feature), and pkg-config to find it.
ensure_build_deps() {
    local missing=()
    # iproute2: ss, with which the feed's back-pressure tests see a
    # server socket's send buffer full.
    for package in libssl-dev pkg-config iproute2; do
        installed "$package" || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# For the end-to-end benchmark and the soak: gives PostgreSQL the WAL
# settings deploy/docker-compose.yml gives TimescaleDB, and puts back what
# postgresql.auto.conf said before (or removes the entry) when the calling
# script ends, however it ends. Both take effect on reload.
PG_WAL=(max_wal_size=16GB checkpoint_timeout=15min)
psql_test() { psql -h 127.0.0.1 -U postgres -d test -Atqc "$1"; }
restore_pg_wal() {
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
use_bench_wal_settings() {
    saved_pg=()
    for kv in "${PG_WAL[@]}"; do
        name=${kv%%=*}
        saved_pg+=("$name=$(psql_test "SELECT setting FROM pg_file_settings \
            WHERE name = '$name' AND sourcefile LIKE '%postgresql.auto.conf' AND applied")")
    done
    trap restore_pg_wal EXIT
    for kv in "${PG_WAL[@]}"; do
        psql_test "ALTER SYSTEM SET ${kv%%=*} = '${kv#*=}'"
    done
    psql_test "SELECT pg_reload_conf()" >/dev/null
    log "PostgreSQL for the run: ${PG_WAL[*]}"
}
