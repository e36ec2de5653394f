//! The `fleetpipe` binary as an operator runs it: exit codes, one-line
//! errors, and a graceful stop on SIGTERM.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn fleetpipe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetpipe"));
    // The tests' own environment must not leak config overrides in.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETPIPE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("fleetpipe.toml");
    let data = dir.join("data");
    // The default state_dir is relative to the working directory (the crate
    // when under cargo test); keep the checkpoint inside the test's tempdir.
    let state = dir.join("state");
    std::fs::write(
        &path,
        format!(
            "[ingest.mqtt]\nlisten = \"127.0.0.1:0\"\nlisten_v5 = \"127.0.0.1:0\"\n[ingest.http]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n[sink.file]\ndir = {data:?}\n[enrich]\nstate_dir = {state:?}\n{extra}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn config_check_accepts_the_shipped_file() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fleetpipe.toml");
    let out = fleetpipe()
        .args(["config", "check"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));
}

#[test]
fn the_deploy_config_needs_its_jwt_secret_from_the_environment() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fleetpipe.toml");
    let out = fleetpipe()
        .args(["config", "check"])
        .arg(&deploy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ingest.auth.jwt_secret"));
    let out = fleetpipe()
        .args(["config", "check"])
        .arg(&deploy)
        .env("FLEETPIPE_INGEST__AUTH__JWT_SECRET", "s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_fail_with_one_line_naming_the_key_or_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[ingest.mqtt]\nlisten_port = 1\n", "listen_port"),
        (
            "[ingest.limits]\nmax_past = \"forever\"\n",
            "ingest.limits.max_past",
        ),
        ("[enrich]\nh3_resolutions = [16]\n", "enrich.h3_resolutions"),
        (
            "[ingest.auth]\nmode = \"jwt\"\njwt_secret = \"s\"\njwt_algorithms = [\"HS256\", \"none\"]\n",
            "ingest.auth.jwt_algorithms: unknown algorithm \"none\"",
        ),
        (
            "[ingest.auth]\nmode = \"jwt\"\njwt_algorithms = [\"RS256\"]\n",
            "ingest.auth.jwks_file",
        ),
    ];
    for (body, needle) in cases {
        // Appending a second [ingest.mqtt] table would be a TOML error; write fresh files.
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("[sink.file]\ndir = \"d\"\n{body}")).unwrap();
        let out = fleetpipe()
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let out = fleetpipe()
        .args(["run", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        "error: config file /no/such/file.toml: No such file or directory (os error 2)"
    );
}

/// `config check` runs each sink's own validation (the one its start runs)
/// and the rules between sections: a config it accepts does not then fail
/// at start over a setting.
#[test]
fn sink_settings_that_would_fail_at_start_fail_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let timescale = "[sink.timescale]\nurl = \"postgresql://postgres@127.0.0.1:5432/test\"\n";
    let cases = [
        (
            "[sink.kafka]\nbrokers = \"embedded\"\ncompression = \"brotli\"\n".to_owned(),
            "sink.kafka.compression",
        ),
        (
            "[sink.kafka]\nbrokers = \"embedded\"\nmax_in_flight = 0\n".to_owned(),
            "sink.kafka.max_in_flight",
        ),
        (
            format!("{timescale}writers = 0\n"),
            "sink.timescale.writers",
        ),
        (
            format!("{timescale}schema = \"fleet-1\"\n"),
            "sink.timescale.schema",
        ),
        (
            "[sink.file]\ndir = \"d\"\nbatch_max_records = 0\n".to_owned(),
            "sink.file.batch_max_records",
        ),
        // compress_after not longer than max_past: equal (7 days each) ...
        (
            format!("{timescale}compress_after = \"7days\"\n"),
            "sink.timescale.compress_after",
        ),
        // ... or shorter than a raised max_past.
        (
            format!("{timescale}[ingest.limits]\nmax_past = \"30days\"\n"),
            "ingest.limits.max_past",
        ),
        // PostgreSQL TLS: verify-full needs a CA file, which must load; TLS
        // is not set in the URL; the same for the fence table.
        (
            format!("{timescale}[sink.timescale.tls]\nmode = \"verify-full\"\n"),
            "sink.timescale.tls.ca_file is required",
        ),
        (
            format!(
                "{timescale}[sink.timescale.tls]\nmode = \"verify-ca\"\nca_file = \"/no/such/ca.pem\"\n"
            ),
            "sink.timescale.tls.ca_file = /no/such/ca.pem: cannot read",
        ),
        (
            format!("{timescale}[sink.timescale.tls]\nmode = \"prefer\"\n"),
            "sink.timescale.tls.mode",
        ),
        (
            "[sink.timescale]\nurl = \"postgresql://postgres@127.0.0.1:5432/test?sslmode=require\"\n"
                .to_owned(),
            "sink.timescale.url sets sslmode",
        ),
        (
            "[sink.file]\ndir = \"d\"\n[geofence.postgres]\nurl = \"postgresql://h/db\"\n\
             [geofence.postgres.tls]\nmode = \"verify-full\"\n"
                .to_owned(),
            "geofence.postgres.tls.ca_file is required",
        ),
    ];
    for (body, needle) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &body).unwrap();
        let out = fleetpipe()
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}: accepted");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // The defaults pass, and so does a compress_after longer than a raised
    // max_past.
    for body in [
        timescale.to_owned(),
        format!("{timescale}compress_after = \"31days\"\n[ingest.limits]\nmax_past = \"30days\"\n"),
    ] {
        let path = dir.path().join("good.toml");
        std::fs::write(&path, &body).unwrap();
        let out = fleetpipe()
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{body}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_taken_port_fails_fast_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    for (var, key) in [
        ("FLEETPIPE_INGEST__HTTP__LISTEN", "ingest.http.listen"),
        ("FLEETPIPE_INGEST__MQTT__LISTEN", "ingest.mqtt.listen"),
        ("FLEETPIPE_OPS__LISTEN", "ops.listen"),
    ] {
        let out = fleetpipe()
            .args(["run", "--config"])
            .arg(&config)
            .env(var, format!("127.0.0.1:{port}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(&port.to_string()),
            "{stderr}"
        );
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[log]\nformat = \"json\"\n");
    let (mut child, lines, http, _ops) = run_json(&config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let body = format!(
            "[{}]",
            (0..50)
                .map(|s| json_ping("van-t", s))
                .collect::<Vec<_>>()
                .join(",")
        );
        reqwest::Client::new()
            .post(format!("http://{http}/v1/pings"))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(exit.success(), "exit {exit:?}; log: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("fleetpipe stopped")),
        "{rest:?}"
    );
    assert_eq!(read_stream(&dir.path().join("data"), "telemetry").len(), 50);
}

/// Starts `fleetpipe run` with `config` (JSON logs) and returns the child,
/// the rest of its log, and its device and ops listeners' addresses.
fn run_json(
    config: &Path,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    String,
    String,
) {
    let mut child = fleetpipe()
        .args(["run", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        assert!(Instant::now() < deadline, "fleetpipe did not start");
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "fleetpipe is running" {
            break v;
        }
    };
    let http = running["fields"]["http"].as_str().unwrap().to_owned();
    let ops = running["fields"]["ops"].as_str().unwrap().to_owned();
    (child, lines, http, ops)
}

/// Waits for the child to exit, killing it after `limit`.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fleetpipe did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_closes_idle_and_partial_connections_and_checkpoints() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    // No periodic checkpoint: the file can only come from the final one.
    // Header and idle timeouts far beyond the test: only shutdown closes.
    let config = write_config(
        dir.path(),
        "snapshot_interval = \"1h\"\n[log]\nformat = \"json\"\n[pipeline]\nshutdown_timeout = \"30s\"\n",
    );
    let (mut child, lines, http, ops) = run_json(&config);
    let body = format!(
        "[{}]",
        (0..20)
            .map(|s| json_ping("van-c", s))
            .collect::<Vec<_>>()
            .join(",")
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{http}/v1/pings"))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let checkpoint = dir.path().join("state").join("vehicle-state.jsonl");
    assert!(!checkpoint.exists(), "no checkpoint before shutdown");

    // A request head that never ends, and connections that never send, on
    // both listeners.
    let mut partial = std::net::TcpStream::connect(&http).unwrap();
    partial
        .write_all(b"POST /v1/pings HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let idle = std::net::TcpStream::connect(&http).unwrap();
    let ops_idle = std::net::TcpStream::connect(&ops).unwrap();
    // Let the server take them in before the signal.
    std::thread::sleep(Duration::from_millis(300));

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Well before shutdown_timeout (30 s), or the connections held it up.
    let exit = wait_exit(&mut child, Duration::from_secs(20));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(exit.success(), "exit {exit:?}; log: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("fleetpipe stopped")),
        "{rest:?}"
    );
    let state = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(state.contains("van-c"), "{state}");
    assert_eq!(read_stream(&dir.path().join("data"), "telemetry").len(), 20);
    // Held open by this side until the process was gone.
    drop((partial, idle, ops_idle));
}

#[test]
fn demo_drives_a_simulated_fleet_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let fences = dir.path().join("fences.geojson");
    let out = fleetpipe()
        .args(["demo", "--config"])
        .arg(&config)
        .args(["--vehicles", "40", "--rate", "400", "--duration", "6s"])
        .args(["--report-every", "2s", "--fences-out"])
        .arg(&fences)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("fleetpipe demo: 40 simulated vehicles"),
        "{stdout}"
    );
    assert!(
        lines.len() >= 5,
        "a banner, the map's line, summaries and the events line: {stdout}"
    );
    // Without a database, one line says how to get the map.
    assert_eq!(
        lines[1],
        "map: off (it needs PostgreSQL): fleetpipe demo --database \
         [postgresql://postgres@127.0.0.1:5432/test]",
        "{stdout}"
    );

    // The last summary holds the fleet's totals: every ping the fleet saw
    // acknowledged is in the file sink, none was refused.
    let summary = lines[lines.len() - 2];
    let number_after = |label: &str| -> u64 {
        let rest = &summary[summary
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {summary}"))
            + label.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let sent = number_after("pings sent ");
    let durable = number_after("durable ");
    assert_eq!(number_after("rejected "), 0, "{summary}");
    assert!(
        durable > 500,
        "the fleet published for 6 s at 400/s: {summary}"
    );
    let telemetry = read_stream(&dir.path().join("data"), "telemetry");
    assert!(
        telemetry.len() as u64 >= durable && telemetry.len() as u64 <= sent,
        "{} telemetry records, {durable} acknowledged, {sent} sent",
        telemetry.len()
    );
    assert!(telemetry.iter().all(|r| {
        r["vehicle_id"]
            .as_str()
            .is_some_and(|v| v.starts_with("sim-"))
    }));
    // The city's fences were loaded: pings carry fence ids, and events came out.
    assert!(
        std::fs::read_to_string(&fences)
            .unwrap()
            .contains("depot-1")
    );
    assert!(
        telemetry
            .iter()
            .any(|r| r["fences"].as_array().is_some_and(|f| !f.is_empty())),
        "no ping was inside a fence"
    );
    let events_line = lines[lines.len() - 1];
    assert!(
        events_line.starts_with("events: ") && !events_line.contains("none yet"),
        "{events_line}"
    );
    assert!(!read_stream(&dir.path().join("data"), "events").is_empty());
}

/// A database that cannot be reached costs the demo its map, nothing else:
/// one line says so, and the fleet drives as without one.
#[test]
fn demo_runs_without_the_map_when_its_database_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // Nothing listens on port 1.
    let out = fleetpipe()
        .args(["demo", "--config"])
        .arg(&config)
        .args(["--database", "postgresql://demo:secret@127.0.0.1:1/none"])
        .args(["--vehicles", "5", "--rate", "100", "--duration", "2s"])
        .args(["--report-every", "1s", "--fences-out"])
        .arg(dir.path().join("fences.geojson"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("fleetpipe demo: 5 simulated vehicles"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(
            "map: off: the database postgresql://demo:***@127.0.0.1:1/none \
             cannot be reached ("
        ),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("--database postgresql://USER@HOST:PORT/DB"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret"), "{stdout}");
    assert!(
        read_stream(&dir.path().join("data"), "telemetry").len() > 10,
        "{stdout}"
    );
}

/// `db migrate` prepares the whole schema, each table made by the crate
/// that owns it: the sink's tables by its migrations and enrichment's
/// `vehicle_state` by enrichment; a second run changes nothing. The new
/// connection keys are refused out of range, naming the key.
#[test]
fn db_migrate_creates_the_sinks_tables_and_the_state_table() {
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("Fp_cli_migrate_{}_{nanos}", std::process::id());
    let timescale = format!(
        "[sink.timescale]\nurl = \"postgresql://postgres@127.0.0.1:5432/test\"\n\
         schema = \"{schema}\"\nconnect_timeout = \"5s\"\nstatement_timeout = \"30s\"\n"
    );
    let path = write_config(dir.path(), &timescale);
    for _ in 0..2 {
        let out = fleetpipe()
            .args(["db", "migrate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tables: Vec<String> = runtime.block_on(async {
        let (db, connection) = tokio_postgres::connect(
            "postgresql://postgres@127.0.0.1:5432/test",
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let tables = db
            .query(
                "SELECT c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
                &[&schema],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
        tables
    });
    assert_eq!(
        tables,
        [
            "dead_letters",
            "fleetpipe_migrations",
            "telemetry",
            "vehicle_events",
            "vehicle_latest",
            "vehicle_state"
        ]
    );

    for (extra, needle) in [
        (
            "connect_timeout = \"0s\"\n",
            "sink.timescale.connect_timeout must be whole seconds",
        ),
        (
            "statement_timeout = \"0s\"\n",
            "sink.timescale.statement_timeout must be whole milliseconds",
        ),
    ] {
        let body = format!(
            "[sink.timescale]\nurl = \"postgresql://postgres@127.0.0.1:5432/test\"\n{extra}"
        );
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &body).unwrap();
        let out = fleetpipe()
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}: accepted");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
