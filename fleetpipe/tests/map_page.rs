//! The live map page in a real browser, during a real demo: the
//! `fleetpipe demo` binary with `--database` (the real PostgreSQL at
//! 127.0.0.1:5432, a fresh schema) drives a small simulated fleet at
//! wall-clock speed and prints the map's address; this test makes a share
//! link for one vehicle through the API and runs
//! `tests/browser/map.mjs`, which opens both pages in Debian's Chromium
//! with playwright-core and checks what a person would see (moving vehicles
//! coloured by state, fences, an arrival in the ticker, a clicked vehicle's
//! track, the share page's one vehicle, no request elsewhere, no console
//! error).
//!
//! `scripts/test.sh` installs Chromium and playwright-core
//! (`scripts/lib/services.sh`, `ensure_browser`); without them the test
//! fails (never skips), saying how to install them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const PG: &str = "postgresql://postgres@127.0.0.1:5432/test";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The demo, killed when the test ends however it ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo's schema, dropped when the test ends, also when it failed
/// (after the demo is gone: declare it before the [`Demo`]).
struct Schema(String);

impl Drop for Schema {
    /// Drop cannot await: a thread with a runtime of its own can.
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (db, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                db.batch_execute(&sql).await
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("dropping the test's schema failed: {e:?}");
        }
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Chromium and playwright-core are installed, or the test says how.
fn check_browser() {
    let how = format!(
        "run scripts/test.sh (it installs both), or: apt-get install chromium && (cd {} && npm ci)",
        browser_dir().display()
    );
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing; {how}");
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in {}; {how}",
        browser_dir().display()
    );
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A configuration on free loopback ports, writing files under `dir`.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("fleetpipe.toml");
    std::fs::write(
        &path,
        format!(
            "[ingest.mqtt]\nlisten = \"127.0.0.1:0\"\nlisten_v5 = \"127.0.0.1:0\"\n\
             [ingest.http]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
             [sink.file]\ndir = {:?}\n[enrich]\nstate_dir = {:?}\n",
            dir.join("data"),
            dir.join("state"),
        ),
    )
    .unwrap();
    path
}

/// Waits up to `patience` for a line starting with `prefix`; every line
/// read is kept in `seen` for the failure message.
fn line_starting(
    lines: &mpsc::Receiver<String>,
    prefix: &str,
    patience: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + patience;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_map_shows_the_fleet_drive_and_arrive_and_a_share_link_its_one_vehicle() {
    check_browser();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let schema = Schema(format!("fp_map_{}_{}", std::process::id(), now_ms()));
    let log = dir.path().join("demo.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetpipe"));
    // The tests' own environment must not leak config overrides in.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETPIPE_") {
            command.env_remove(k);
        }
    }
    let child = command
        .args(["demo", "--config"])
        .arg(&config)
        .args(["--database", PG, "--database-schema", &schema.0])
        .args(["--map-listen", "127.0.0.1:0", "--vehicles", "8"])
        // A bound in case the test process dies without killing it.
        .args(["--duration", "10m", "--report-every", "10s", "--fences-out"])
        .arg(dir.path().join("fences.geojson"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let map_line = line_starting(&lines, "map: ", Duration::from_secs(60), &mut seen)
        .unwrap_or_else(|| {
            panic!(
                "the demo printed no map address: {seen:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let url = map_line.strip_prefix("map: ").unwrap().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/map#token="),
        "{map_line}"
    );
    let (base, token) = url.split_once("/map#token=").unwrap();
    let (base, token) = (base.to_owned(), token.to_owned());
    // The token is printed once, for the user, and never logged.
    std::thread::sleep(Duration::from_secs(1));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&token), "the token is in the log");

    // A vehicle to share: the first by id, so the same simulated van (the
    // fleet is deterministic, seed 1) every run, one that keeps reporting
    // through the test.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let vehicle = loop {
        let answer: Value = http
            .get(format!("{base}/v1/vehicles"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let first = answer["vehicles"]
            .as_array()
            .unwrap()
            .first()
            .map(|v| v["vehicle_id"].as_str().unwrap().to_owned());
        if let Some(id) = first {
            break id;
        }
        assert!(Instant::now() < deadline, "no vehicle stored after 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let link: Value = http
        .post(format!("{base}/v1/share-links"))
        .bearer_auth(&token)
        .json(&json!({"vehicle_id": vehicle, "expires_in": "1h"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let share = link["token"].as_str().unwrap();
    assert!(share.starts_with("fps_"), "{link}");

    // The browser, for as long as it needs (map.mjs bounds each wait).
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("map.png");
    let browser = tokio::task::spawn_blocking({
        let args = [
            url.clone(),
            format!("{base}/map#share={share}"),
            vehicle.clone(),
            screenshot.display().to_string(),
        ];
        move || {
            Command::new("node")
                .arg(browser_dir().join("map.mjs"))
                .args(args)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("node runs (apt-get install nodejs)");
    let out = String::from_utf8_lossy(&browser.stdout);
    let err = String::from_utf8_lossy(&browser.stderr);
    println!("{out}");
    let demo_out: Vec<String> = lines.try_iter().collect();
    assert!(
        browser.status.success(),
        "map.mjs failed ({}):\n{out}\n{err}\ndemo stdout: {seen:?} {demo_out:?}",
        browser.status
    );
    assert!(out.contains("map.mjs: ok"), "{out}");

    drop(demo);
    drop(schema);
}
