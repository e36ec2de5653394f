//! The query API against its own OpenAPI document: schemathesis (PyPI)
//! reads `GET /v1/openapi.json` from a running pipeline (the TimescaleDB
//! sink on the real PostgreSQL, `[api]` on a loopback port, vehicles,
//! tracks, events, trips and fences stored) and sends every operation
//! generated requests, valid and invalid, checking each answer against the
//! document: no 5xx, only documented statuses, the documented content type,
//! headers and body schema. Once with a fleet token, once with a
//! vehicle-scoped one.
//!
//! `scripts/test.sh` installs schemathesis into a virtualenv under the
//! target directory and exports `SCHEMATHESIS`; without it the test looks
//! in that virtualenv, and fails (never skips) when it is not there.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{ApiTest, IN_DEPOT, Scope, drive_out_of_the_depot, ping};
use common::now_ms;
use common::stock_clients::Run;
use serde_json::Value;

/// The schemathesis release the test runs (its flags are v4's).
const VERSION: &str = "4.32.5";

const FLEET_TOKEN: &str = "schema-fleet-token";
const VEHICLE_TOKEN: &str = "schema-vehicle-token";

/// The checks every answer must pass.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

/// Generated requests per operation and phase, and the seed: the same
/// requests every run, a run well under a minute.
const MAX_EXAMPLES: &str = "40";
const SEED: &str = "20";

/// The schemathesis executable: `$SCHEMATHESIS`, else the virtualenv
/// `scripts/test.sh` makes under the target directory.
fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{VERSION}"));
    let path = std::env::var_os("SCHEMATHESIS")
        .map_or_else(|| venv.join("bin/schemathesis"), PathBuf::from);
    let how = format!(
        "run scripts/test.sh, which installs it, or: python3 -m venv {venv} && \
         {venv}/bin/pip install schemathesis=={VERSION} && export SCHEMATHESIS={venv}/bin/schemathesis",
        venv = venv.display()
    );
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("schemathesis not found at {}: {e}; {how}", path.display()));
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.trim().ends_with(VERSION),
        "{} is {:?}, not schemathesis {VERSION}; {how}",
        path.display(),
        version.trim()
    );
    path
}

/// What the API serves during the runs: two vehicles drive out of the
/// depot and stop east of it (online, geofence, motion, state events and
/// a trip each), one stands in the depot with open trouble codes and
/// charges, one reported long ago.
fn pings() -> Vec<Value> {
    let mut pings = drive_out_of_the_depot(&["ev-1", "ev-2"], now_ms() - 600_000);
    for p in &mut pings {
        let i = p["seq"].as_f64().unwrap_or_default();
        p["heading_deg"] = Value::from(90.0);
        p["soc_pct"] = Value::from(70.0 - i * 0.1);
    }
    let mut dtc = ping("van-1", 1, now_ms() - 5000, IN_DEPOT);
    dtc["dtcs"] = serde_json::json!(["P0301", "U0100"]);
    dtc["charging"] = Value::from(true);
    dtc["ignition"] = Value::from(false);
    pings.push(dtc);
    pings.push(ping("old-1", 1, now_ms() - 3 * 3600 * 1000, (52.6, 13.6)));
    pings
}

/// Runs schemathesis against the API with `token`; panics with its output
/// unless every check passed.
async fn check(t: &ApiTest, token: &str, what: &str) {
    let program = schemathesis();
    // Its working directory is a fresh one: nothing it writes (or a
    // schemathesis.toml lying around) reaches the repository.
    let cwd = tempfile::tempdir().unwrap();
    // Its warnings fail the run too: "schema validation mismatch" (valid
    // requests by the document mostly refused: the document under-states
    // what the handlers check) and "missing test data" (an operation only
    // ever answered 404) mean the document no longer lets it reach the
    // handlers' work.
    let config = cwd.path().join("schemathesis.toml");
    std::fs::write(&config, "[warnings]\nfail-on = true\n").unwrap();
    let config = config.to_str().unwrap();
    let url = format!("{}/v1/openapi.json", t.base);
    let auth = format!("Authorization: Bearer {token}");
    let args = [
        "--config-file",
        config,
        "run",
        url.as_str(),
        "-H",
        auth.as_str(),
        "--checks",
        CHECKS,
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--generation-database",
        "none",
        // One worker: the same requests in the same order every run (and
        // with two, hypothesis' lambda descriptions hit CPython 3.11's
        // "AST constructor recursion depth mismatch" now and then).
        "--workers",
        "1",
        "--request-timeout",
        "10",
        // The live feed's two streams are left out: an SSE answer never
        // ends and a WebSocket needs an upgrade, neither is a request and
        // answer schemathesis can check (tests/feed.rs tests them through
        // real sockets); with the feed off here they would only be 404.
        "--exclude-path-regex",
        "^/v1/feed",
        "--no-color",
    ];
    let started = Instant::now();
    let out = run_in(&program, &args, cwd.path(), Duration::from_secs(110)).await;
    let took = started.elapsed();
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    let command = format!("{} {}", program.display(), quoted.join(" "));
    assert!(
        out.success,
        "schemathesis found answers that break the document ({what}) in {took:?}\n\
         $ {command}\n{}\n{}",
        out.stdout, out.stderr
    );
    // It tested every operation, each with generated requests.
    // Every operation but the document itself (which schemathesis reads,
    // not tests).
    assert!(
        out.stdout.contains("Selected: 8/10") && out.stdout.contains("Tested: 8"),
        "{what}: not every operation ran\n{}",
        out.stdout
    );
    eprintln!("schemathesis ({what}) passed in {took:?}\n{}", out.stdout);
}

/// Runs `program args` in `cwd`, killed after `timeout`.
async fn run_in(program: &Path, args: &[&str], cwd: &Path, timeout: Duration) -> Run {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis still running after {timeout:?}"))
        .expect("schemathesis output");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_openapi_document() {
    // Fail before starting anything when the tool is missing.
    schemathesis();
    let t = ApiTest::start(
        &[
            ("dispatch", FLEET_TOKEN, Scope::Fleet),
            (
                "customer",
                VEHICLE_TOKEN,
                Scope::Vehicles(&["ev-1", "van-1"]),
            ),
        ],
        |api| api.offline_after = Duration::from_secs(3600),
    )
    .await;
    let pings = pings();
    t.send(&pings, pings.len() as i64).await;
    t.settle_events().await;
    // Everything the document describes exists: a trip to list, fences
    // with vehicles in them, a vehicle with open codes.
    let (status, trips) = t.get(Some(FLEET_TOKEN), "/v1/trips").await;
    assert_eq!(status, 200, "{trips}");
    assert!(!trips["trips"].as_array().unwrap().is_empty(), "{trips}");
    let (_, fences) = t.get(Some(FLEET_TOKEN), "/v1/fences").await;
    assert_eq!(fences["features"][0]["properties"]["occupancy"], 1);

    check(&t, FLEET_TOKEN, "a fleet token").await;
    check(&t, VEHICLE_TOKEN, "a vehicle-scoped token").await;
    t.stop().await;
}
