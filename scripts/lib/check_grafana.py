"""Validates deploy/grafana/ (run by scripts/check-deploy.sh with the tools
venv's Python, which has PyYAML).

Grafana publishes no offline validator for its classic dashboard JSON, so
this checks what a provisioned dashboard needs to load and to query the
right data source:

- every dashboard parses as JSON, has a uid (unique across the files,
  Grafana's 40 characters at most), a unique title, the schemaVersion
  below, a time range, and panels with unique ids and a gridPos inside the
  24-column grid that overlaps no other panel;
- every panel and target names a data source the provisioning defines (by
  uid and type), or the dashboard's own datasource variable; SQL targets are
  raw SQL (rawQuery, rawSql, format table or time_series), Prometheus
  targets have an expr; refIds are unique per panel;
- every $variable a query, title or link uses is one of the dashboard's
  template variables or a Grafana built-in;
- the provisioning: unique data source uids, the PostgreSQL one with
  jsonData.timescaledb, every password and user an environment reference
  (no secret in a file), and the dashboards provider's path is where
  deploy/docker-compose.yml mounts deploy/grafana/dashboards/.

It also writes every Prometheus query (template variables replaced by
stand-ins) as a rules file to the path given, for `promtool check rules`,
which parses each with Prometheus' own PromQL parser.

The SQL and the metric names are checked against fleetpipe itself by
fleetpipe/tests/dashboards.rs.
"""

import json
import pathlib
import re
import sys

import yaml

SCHEMA_VERSION = 41
GRID_COLUMNS = 24
PANEL_TYPES = {
    "barchart", "bargauge", "gauge", "geomap", "heatmap", "histogram", "logs",
    "news", "piechart", "row", "stat", "state-timeline", "status-history",
    "table", "text", "timeseries", "trend", "xychart", "candlestick", "canvas",
    "nodeGraph", "traces", "flamegraph", "dashlist", "alertlist",
}
BUILTINS = {
    "__interval", "__interval_ms", "__rate_interval", "__range", "__range_s",
    "__range_ms", "__timeFilter", "__timeFrom", "__timeTo", "__timeGroup",
    "__timeGroupAlias", "__unixEpochFilter", "__unixEpochFrom", "__unixEpochTo",
    "__value", "__url_time_range", "__all", "__dashboard", "__from", "__to",
    "__field", "__series", "__data", "__org", "__user", "__name",
}
# Stand-ins for template variables in the PromQL handed to promtool.
PROMQL_STANDINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?:[:.][^}]*)?\}|([A-Za-z0-9_]+))")

errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


def env_reference(value):
    return isinstance(value, str) and re.fullmatch(r"\$\{?[A-Z0-9_]+\}?", value) is not None


def check_provisioning(root, compose):
    sources = {}
    for path in sorted((root / "provisioning/datasources").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for ds in doc.get("datasources", []):
            where = f"{path}: data source {ds.get('name')!r}"
            uid = ds.get("uid")
            if not uid:
                error(where, "no uid (the dashboards refer to data sources by uid)")
                continue
            if uid in sources:
                error(where, f"uid {uid} defined twice")
            sources[uid] = ds.get("type")
            for key, value in (ds.get("secureJsonData") or {}).items():
                if not env_reference(value):
                    error(where, f"secureJsonData.{key} is not an environment reference")
            if "password" in ds or "basicAuthPassword" in ds:
                error(where, "a password outside secureJsonData")
            if ds.get("type") == "grafana-postgresql-datasource":
                if (ds.get("jsonData") or {}).get("timescaledb") is not True:
                    error(where, "jsonData.timescaledb is not true")
                if not env_reference(ds.get("user")):
                    error(where, "user is not an environment reference")
    if not sources:
        error(root / "provisioning/datasources", "no data source")
    paths = []
    for path in sorted((root / "provisioning/dashboards").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for provider in doc.get("providers", []):
            paths.append((path, provider.get("type"), (provider.get("options") or {}).get("path")))
    if not paths:
        error(root / "provisioning/dashboards", "no dashboard provider")
    services = yaml.safe_load(compose.read_text())["services"]
    mounts = services.get("grafana", {}).get("volumes", [])
    for path, kind, target in paths:
        if kind != "file" or f"./grafana/dashboards:{target}:ro" not in mounts:
            error(path, f"provider path {target} is not where {compose} mounts "
                        "./grafana/dashboards (read-only)")
    for folder in ("provisioning", "dashboards"):
        if not any(m.startswith(f"./grafana/{folder}:") and m.endswith(":ro") for m in mounts):
            error(compose, f"grafana does not mount ./grafana/{folder} read-only")
    return sources


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_datasource(where, ds, sources, variables):
    if not isinstance(ds, dict):
        error(where, f"datasource {ds!r} is not a {{type, uid}} reference")
        return None
    uid, kind = ds.get("uid"), ds.get("type")
    if isinstance(uid, str) and uid.startswith("${"):
        name = uid[2:-1]
        variable = variables.get(name)
        if not variable or variable.get("type") != "datasource" or variable.get("query") != kind:
            error(where, f"datasource uid {uid} is not a datasource variable of type {kind}")
        return kind
    if uid not in sources:
        error(where, f"datasource uid {uid} is not provisioned ({sorted(sources)})")
    elif sources[uid] != kind:
        error(where, f"datasource {uid} is of type {sources[uid]}, not {kind}")
    return kind


def check_dashboard(path, dashboard, sources, promql):
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    uid = dashboard.get("uid")
    if not isinstance(uid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid):
        error(path, f"uid {uid!r}: 1 to 40 letters, digits, - or _")
    if not dashboard.get("title"):
        error(path, "no title")
    if dashboard.get("schemaVersion") != SCHEMA_VERSION:
        error(path, f"schemaVersion {dashboard.get('schemaVersion')} (expected {SCHEMA_VERSION})")
    if not {"from", "to"} <= set(dashboard.get("time", {})):
        error(path, "no time range")
    used = set()
    for name, variable in variables.items():
        where = f"{path}: variable {name}"
        if variable.get("type") not in {"query", "custom", "textbox", "constant", "datasource", "interval"}:
            error(where, f"type {variable.get('type')}")
        if variable.get("type") == "query":
            check_datasource(where, variable.get("datasource"), sources, variables)
            query = variable.get("query")
            used.add(json.dumps(query))
    ids, cells = set(), {}
    for panel in panels_of(dashboard):
        where = f"{path}: panel {panel.get('title')!r}"
        if panel.get("type") not in PANEL_TYPES:
            error(where, f"panel type {panel.get('type')!r}")
        if panel.get("id") in ids:
            error(where, f"id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "xywh") or grid["w"] < 1 or grid["h"] < 1 \
                or grid["x"] < 0 or grid["x"] + grid["w"] > GRID_COLUMNS:
            error(where, f"gridPos {grid} is not inside the {GRID_COLUMNS}-column grid")
        else:
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    if (x, y) in cells:
                        error(where, f"overlaps panel {cells[(x, y)]!r}")
                        break
                    cells[(x, y)] = panel.get("title")
                else:
                    continue
                break
        if panel.get("type") == "row":
            continue
        check_datasource(where, panel.get("datasource"), sources, variables)
        refs = set()
        targets = panel.get("targets") or []
        if not targets:
            error(where, "no query")
        for target in targets:
            ref = target.get("refId")
            if not ref or ref in refs:
                error(where, f"refId {ref!r} missing or used twice")
            refs.add(ref)
            kind = check_datasource(f"{where} {ref}", target.get("datasource"), sources, variables)
            if kind == "grafana-postgresql-datasource":
                if not (target.get("rawQuery") and target.get("rawSql")):
                    error(f"{where} {ref}", "not a raw SQL query (rawQuery, rawSql)")
                if target.get("format") not in {"table", "time_series"}:
                    error(f"{where} {ref}", f"format {target.get('format')!r}")
                used.add(target.get("rawSql", ""))
            elif kind == "prometheus":
                expr = target.get("expr")
                if not expr:
                    error(f"{where} {ref}", "no expr")
                    continue
                used.add(expr)
                standin = VARIABLE.sub(
                    lambda m: PROMQL_STANDINS.get(m.group(1) or m.group(2), ".*"), expr)
                promql.append((f"{path.name} {panel.get('title')} {ref}", standin))
        used.add(panel.get("title", ""))
        used.add(json.dumps(panel.get("fieldConfig", {})))
    for text in used:
        for match in VARIABLE.finditer(text):
            name = match.group(1) or match.group(2)
            if name not in variables and name not in BUILTINS:
                error(path, f"${name} is neither a template variable nor a Grafana built-in")
    return uid, dashboard.get("title")


def main():
    root, compose, rules = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    sources = check_provisioning(root, compose)
    uids, titles, promql = {}, {}, []
    files = sorted((root / "dashboards").glob("*.json"))
    if not files:
        error(root / "dashboards", "no dashboard")
    for path in files:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            error(path, f"not JSON: {e}")
            continue
        uid, title = check_dashboard(path, dashboard, sources, promql)
        for seen, key, what in ((uids, uid, "uid"), (titles, title, "title")):
            if key in seen:
                error(path, f"{what} {key!r} is also {seen[key]}'s")
            seen[key] = path
    groups = [{"name": "fleetpipe-dashboards", "rules": [
        {"record": f"fleetpipe_dashboard:query_{i}", "expr": expr,
         "labels": {"dashboard_query": where}}
        for i, (where, expr) in enumerate(promql)]}]
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if not errors:
        print(f"{len(files)} dashboards, {len(sources)} data sources, "
              f"{len(promql)} Prometheus queries (to promtool)")
    sys.exit(1 if errors else 0)


main()
