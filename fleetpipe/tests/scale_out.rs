//! The roles as separate processes against a Kafka endpoint in its own
//! process (Tansu), checked against the `all` role as the oracle: the
//! simulator's fleet (same seed, geofences, late uploads after silences)
//! goes once through `all` and once through gateway → enrich members →
//! writer; both end in PostgreSQL, and the rows must be the same.
//!
//! Time: the stage's decisions depend on wall time only through the
//! reorder window's wall-clock release and the offline timer. Both are set
//! longer than a run here, so every decision is made on device time and the
//! two runs must agree exactly, whichever process made it and however
//! often a partition moved.
//!
//! The live feed in the same layout: read nodes (`cluster.role = "read"`)
//! beside the writer, each serving the whole fleet to its WebSocket
//! clients ([`every_read_node_serves_the_whole_fleet`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetpipe_kafka::test_support::Tansu;
use fleetpipe_sim::{Fleet, SimConfig, SimMessage, SimPing, encode_json};
use tokio::sync::Mutex;

const DB: &str = "host=127.0.0.1 user=postgres dbname=test";
const DB_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";
/// Concurrent HTTP publishers; each vehicle always uses the same one, so
/// its messages arrive in the order the simulator made them.
const LANES: usize = 8;

/// The simulated fleet's messages, in the order devices send them, then
/// one *sweep* ping per vehicle, standing where it last was, `REORDER`
/// later than the last message: it releases every ping still held for
/// reordering in both runs. (At shutdown `all` applies what it holds, while
/// an enrich member hands it to the next owner through the changelog; the
/// events of the sweep pings themselves are left out of the comparison:
/// [`Run::sweep_ms`].)
fn fleet_messages(dir: &Path) -> Run {
    let sim = SimConfig {
        seed: 19,
        vehicles: 100,
        ping_interval_ms: 5_000,
        pings_per_message: 4,
        // Late uploads: a device buffers through a silence and uploads
        // its backlog at once when it is back.
        silences_per_hour: 4.0,
        silence_s: [30, 240],
        ..SimConfig::default()
    };
    let minutes = 20;
    // The sweep must not be in the future (ingest.limits.max_future).
    let start = now_ms() - (minutes + 15) * 60_000;
    let mut fleet = Fleet::new(&sim, start).unwrap();
    let mut out = Vec::new();
    fleet.advance_to(start + minutes * 60_000, &mut out);
    let fences = dir.join("fences.geojson");
    std::fs::write(&fences, fleet.city().geofences_geojson()).unwrap();
    let last_ts = out
        .iter()
        .flat_map(|m| m.pings.iter().map(|p| p.ts_ms))
        .max()
        .unwrap();
    let sweep_ms = last_ts + REORDER.as_millis() as i64 + 60_000;
    let mut last: BTreeMap<String, (u32, SimPing)> = BTreeMap::new();
    for m in &out {
        for p in &m.pings {
            last.insert(m.vehicle_id.clone(), (m.vehicle, p.clone()));
        }
    }
    for (vehicle_id, (vehicle, ping)) in last {
        out.push(SimMessage {
            vehicle,
            vehicle_id,
            pings: vec![SimPing {
                seq: ping.seq + 1_000_000,
                ts_ms: sweep_ms,
                speed_kmh: 0.0,
                ..ping
            }],
        });
    }
    let messages = out
        .iter()
        .map(|m| (m.vehicle_id.clone(), encode_json(m).to_vec()))
        .collect();
    Run {
        messages,
        fences,
        sweep_ms,
    }
}

/// What both runs publish.
struct Run {
    messages: Vec<(String, Vec<u8>)>,
    fences: PathBuf,
    /// Device time of the sweep pings: events from here on are left out.
    sweep_ms: i64,
}

/// The reorder window of both runs: longer than a run, so nothing is
/// released by the wall clock.
const REORDER: Duration = Duration::from_secs(600);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings every process shares: the same enrichment, so the same events.
fn common(ops: u16, http: u16, fences: &Path) -> String {
    common_with(ops, http, fences, REORDER)
}

/// [`common`] with another reorder window.
fn common_with(ops: u16, http: u16, fences: &Path, reorder: Duration) -> String {
    format!(
        r#"
[ingest.mqtt]
mode = "off"
[ingest.http]
listen = "127.0.0.1:{http}"
[ingest.rate_limit]
enabled = false
[ops]
listen = "127.0.0.1:{ops}"
[geofence]
file = "{fences}"
watch_interval = "off"
[enrich]
workers = 2
reorder_window = "{reorder}s"
[enrich.connectivity]
offline_after = "1h"
[pipeline]
shutdown_timeout = "60s"
"#,
        fences = fences.display(),
        reorder = reorder.as_secs()
    )
}

/// The consumer groups' timing: short, so that a dead member's partitions
/// move within seconds.
#[derive(Debug, Clone, Copy)]
struct GroupTiming {
    session: &'static str,
    revoke: &'static str,
    max_poll: &'static str,
    restore: &'static str,
}

/// For Tansu with in-memory storage.
const MEMORY_BROKER: GroupTiming = GroupTiming {
    session: "6s",
    revoke: "3s",
    max_poll: "12s",
    restore: "10s",
};

/// For Tansu with SQLite storage, which answers far more slowly under the
/// run's load: with [`MEMORY_BROKER`]'s timing, members' heartbeats went
/// unanswered for 6 s before the broker was touched (sessions expired,
/// partitions lost) and changelog restores took 9-12 s. Its session also
/// outlasts the [`OUTAGE`], so members keep their partitions across the
/// restart.
const DURABLE_BROKER: GroupTiming = GroupTiming {
    session: "30s",
    revoke: "10s",
    max_poll: "90s",
    restore: "60s",
};

fn cluster(role: &str, brokers: &str, timing: GroupTiming) -> String {
    let GroupTiming {
        session,
        revoke,
        max_poll,
        restore,
    } = timing;
    format!(
        r#"
[cluster]
role = "{role}"
partitions = 4
replication_factor = 1
changelog_interval = "200ms"
restore_timeout = "{restore}"
# Tansu 0.6.0 holds a group's rebalance after a member died until the
# rebalance timeout (max_poll_interval) has run out for it. It also keeps a
# dead member as the group's leader when no other member is alive: a
# writer alone in its group, killed and started again, was seen unassigned
# for minutes (SyncGroup failing "rebalance in progress", then "unknown
# member", in a loop), so the kill test runs two writers. Its static
# membership (instance_id) left members unassigned altogether.
[cluster.group]
session_timeout = "{session}"
revoke_timeout = "{revoke}"
max_poll_interval = "{max_poll}"
commit_interval = "200ms"
[sink.kafka]
brokers = "{brokers}"
linger = "5ms"
"#
    )
}

fn timescale(schema: &str) -> String {
    format!(
        r#"
[sink.timescale]
url = "{DB_URL}"
schema = "{schema}"
"#
    )
}

/// One fleetpipe process of a run.
struct Process {
    name: String,
    config: PathBuf,
    log: PathBuf,
    ops: u16,
    child: Child,
    /// Times it died on its own (a crash point) and was started again.
    restarts: u32,
}

impl Process {
    fn spawn(dir: &Path, name: &str, toml: &str, ops: u16, crash_at: Option<&str>) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = start(&config, &log, crash_at);
        Self {
            name: name.to_owned(),
            config,
            log,
            ops,
            child,
            restarts: 0,
        }
    }

    /// Starts it again (without a crash point) if it died.
    fn revive(&mut self) -> bool {
        match self.child.try_wait().unwrap() {
            None => false,
            Some(status) => {
                eprintln!("{} exited ({status}); starting it again", self.name);
                self.restarts += 1;
                self.child = start(&self.config, &self.log, None);
                true
            }
        }
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{} exited with {status}: {}",
                    self.name,
                    self.tail()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop: {}",
                self.name,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.ops);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before ready: {}",
                    self.name,
                    self.tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never ready: {}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path, log: &Path, crash_at: Option<&str>) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetpipe"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove(fleetpipe_kafka::CRASH_AT)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(point) = crash_at {
        command.env(fleetpipe_kafka::CRASH_AT, point);
    }
    command.spawn().unwrap()
}

/// Publishes every message over HTTP to `port`, each vehicle's in order,
/// `LANES` vehicles at a time; a message is sent again until it is
/// answered 200 (a gateway that died is started again by the test).
/// Returns when each was answered 200.
async fn publish(port: u16, messages: &[(String, Vec<u8>)]) -> Vec<Instant> {
    let mut lanes: Vec<Vec<Vec<u8>>> = vec![Vec::new(); LANES];
    for (vehicle, body) in messages {
        let lane = fleetpipe_model::VehicleId::parse(vehicle)
            .unwrap()
            .shard(LANES);
        lanes[lane].push(body.clone());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/pings");
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let mut answered = Vec::with_capacity(lane.len());
            for body in lane {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match client.post(&url).body(body.clone()).send().await {
                        Ok(r) if r.status() == 200 => {
                            answered.push(Instant::now());
                            break;
                        }
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            assert!(status.is_server_error(), "refused ({status}): {text}");
                        }
                        Err(_) => {}
                    }
                    assert!(Instant::now() < deadline, "a message was never stored");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            answered
        });
    }
    let mut answered = Vec::new();
    while let Some(done) = tasks.join_next().await {
        answered.extend(done.unwrap());
    }
    answered
}

async fn db() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(DB, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn fresh_schema(name: &str) -> String {
    let schema = format!("{name}_{}", std::process::id());
    db().await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    schema
}

/// What the database holds after a run.
#[derive(Debug, PartialEq, Eq)]
struct Stored {
    /// (vehicle_id, ts in ms, seq).
    telemetry: BTreeSet<(String, i64, i64)>,
    /// Event ids.
    events: BTreeSet<String>,
}

async fn stored(schema: &str, sweep_ms: i64) -> Stored {
    let client = db().await;
    let telemetry = client
        .query(
            &format!(
                "SELECT vehicle_id, (extract(epoch FROM ts) * 1000)::bigint, seq FROM {schema}.telemetry"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, Option<i64>>(2).unwrap_or(-1)))
        .collect();
    let events = client
        .query(
            &format!(
                "SELECT id FROM {schema}.vehicle_events WHERE time < to_timestamp($1::bigint / 1000.0)"
            ),
            &[&sweep_ms],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    Stored { telemetry, events }
}

/// No vehicle entered the same fence at the same time under two ids.
async fn entered_once(schema: &str) {
    let doubled: i64 = db()
        .await
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT vehicle_id, data->>'fence_id', time FROM {schema}.vehicle_events \
                 WHERE type = 'geofence.entered' GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        doubled, 0,
        "a geofence.entered stored twice under different ids"
    );
}

/// The oracle: the `all` role, one process, into `schema`.
async fn run_all(dir: &Path, run: &Run) -> Stored {
    let schema = fresh_schema("oracle_all").await;
    let (ops, http) = (free_port(), free_port());
    let toml = format!("{}{}", common(ops, http, &run.fences), timescale(&schema));
    let mut all = Process::spawn(dir, "all", &toml, ops, None);
    all.wait_ready().await;
    publish(http, &run.messages).await;
    all.stop();
    let stored = stored(&schema, run.sweep_ms).await;
    assert!(!stored.events.is_empty());
    stored
}

/// Crash points armed per process of the distributed run.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    gateway: Option<&'static str>,
    enrich: [Option<&'static str>; 2],
    writer: Option<&'static str>,
    /// A second writer (without a crash point) beside the first.
    second_writer: bool,
    /// A third enrich member joins halfway through, and is killed (SIGKILL,
    /// wherever it is) three quarters through, then started again.
    join_midway: bool,
    /// The broker (durable storage) is killed (SIGKILL) just after the
    /// second half starts, and started again [`OUTAGE`] later.
    broker_restart: bool,
}

/// How long the broker is away in the broker-restart run.
const OUTAGE: Duration = Duration::from_secs(10);

/// 1 gateway, 2 enrich members (and a third if asked), 1 writer (or 2), each its
/// own process, into a schema of their own; processes that die at a crash
/// point are started again.
async fn run_roles(
    dir: &Path,
    run: &Run,
    tansu: &mut Tansu,
    faults: Faults,
    expected: &Stored,
) -> Stored {
    let schema = fresh_schema("oracle_roles").await;
    let dir = dir.join("roles");
    std::fs::create_dir_all(&dir).unwrap();
    // The same port after a restart.
    let brokers = tansu.bootstrap();
    let timing = if faults.broker_restart {
        DURABLE_BROKER
    } else {
        MEMORY_BROKER
    };
    let role = |name: &str, role: &str, sinks: &str, crash: Option<&'static str>| {
        let (ops, http) = (free_port(), free_port());
        let toml = format!(
            "{}{}{sinks}",
            common(ops, http, &run.fences),
            cluster(role, &brokers, timing)
        );
        (Process::spawn(&dir, name, &toml, ops, crash), http)
    };
    let mut writers = Vec::new();
    let second = faults.second_writer.then_some(None);
    for (i, crash) in std::iter::once(faults.writer).chain(second).enumerate() {
        let (mut writer, _) = role(&format!("writer-{i}"), "writer", &timescale(&schema), crash);
        writer.wait_ready().await;
        writers.push(writer);
    }
    let mut enrich = Vec::new();
    for (i, crash) in faults.enrich.iter().enumerate() {
        let (mut member, _) = role(&format!("enrich-{i}"), "enrich", "", *crash);
        member.wait_ready().await;
        enrich.push(member);
    }
    let (mut gateway, http) = role("gateway", "gateway", "", faults.gateway);
    gateway.wait_ready().await;

    let processes = Arc::new(Mutex::new((gateway, enrich, writers)));
    let supervisor = {
        let processes = Arc::clone(&processes);
        tokio::spawn(async move {
            loop {
                {
                    let mut guard = processes.lock().await;
                    let (gateway, enrich, writers) = &mut *guard;
                    gateway.revive();
                    for member in enrich.iter_mut().chain(writers.iter_mut()) {
                        member.revive();
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let messages = &run.messages;
    let (half, three_quarters) = (messages.len() / 2, messages.len() * 3 / 4);
    publish(http, &messages[..half]).await;
    if faults.join_midway {
        let (member, _) = role("enrich-2", "enrich", "", None);
        processes.lock().await.1.push(member);
    }
    let second_quarter = publish(http, &messages[half..three_quarters]);
    if faults.broker_restart {
        let outage = async {
            // Once the quarter is under way: pings are in flight.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let down = Instant::now();
            tokio::task::block_in_place(|| tansu.kill()).unwrap();
            tokio::time::sleep(OUTAGE).await;
            let back = Instant::now();
            tokio::task::block_in_place(|| tansu.restart()).unwrap_or_else(|e| panic!("{e}"));
            (down, back)
        };
        let (answered, (down, back)) = tokio::join!(second_quarter, outage);
        acknowledgements_paused(&answered, down, back);
    } else {
        second_quarter.await;
    }
    if faults.join_midway {
        // At no particular point of its work: the supervisor restarts it.
        let mut p = processes.lock().await;
        if let Some(joined) = p.1.last_mut() {
            let _ = joined.child.kill();
        }
    }
    publish(http, &messages[three_quarters..]).await;

    // Every ping is in the raw topic; wait until each is a row and every
    // event before the sweep is stored.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = stored(&schema, run.sweep_ms).await;
        if now.telemetry.len() >= expected.telemetry.len()
            && now.events.len() >= expected.events.len()
        {
            break;
        }
        if Instant::now() >= deadline {
            let p = processes.lock().await;
            let tails: Vec<String> = std::iter::once(&p.0)
                .chain(p.1.iter())
                .chain(p.2.iter())
                .map(|process| format!("--- {}:\n{}", process.name, process.tail()))
                .collect();
            panic!("{}\n{}", diff(expected, &now), tails.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    supervisor.abort();
    let _ = supervisor.await;
    let (mut gateway, mut enrich, mut writers) = Arc::try_unwrap(processes)
        .ok()
        .expect("the supervisor is gone")
        .into_inner();
    // Nothing more may come: a duplicate would show as an extra below.
    tokio::time::sleep(Duration::from_secs(2)).await;
    gateway.stop();
    for member in enrich.iter_mut().chain(writers.iter_mut()) {
        member.stop();
    }
    if faults.broker_restart {
        for process in std::iter::once(&gateway)
            .chain(enrich.iter())
            .chain(writers.iter())
        {
            assert_eq!(
                process.restarts,
                0,
                "{} died over the broker's restart: {}",
                process.name,
                process.tail()
            );
        }
    }
    if faults.join_midway {
        let joined = enrich.last().expect("the member that joined");
        assert!(
            joined.restarts >= 1,
            "the member that joined was not killed and restarted"
        );
    }
    for (process, crash) in [(&gateway, faults.gateway), (&writers[0], faults.writer)]
        .into_iter()
        .chain(enrich.iter().zip(faults.enrich.iter().copied()))
    {
        if let Some(point) = crash {
            assert!(
                process.restarts >= 1,
                "{} never reached its crash point {point}: the test did not test it",
                process.name
            );
        }
    }
    entered_once(&schema).await;
    stored(&schema, run.sweep_ms).await
}

/// While the broker was away no device heard "stored" (a ping answered
/// then could only have been lost), and the quarter did not end before
/// the outage began or sit out the outage unanswered: answers came before
/// it and after it.
fn acknowledgements_paused(answered: &[Instant], down: Instant, back: Instant) {
    // An answer whose delivery report came in just before the kill may
    // still be on its way to the device.
    let grace = Duration::from_millis(250);
    let during: Vec<Duration> = answered
        .iter()
        .filter(|t| **t > down + grace && **t < back)
        .map(|t| t.duration_since(down))
        .collect();
    assert!(
        during.is_empty(),
        "{} pings answered 200 while the broker was away (after the kill: {:?})",
        during.len(),
        &during[..during.len().min(5)]
    );
    let before = answered.iter().filter(|t| **t <= down).count();
    let after = answered.iter().filter(|t| **t >= back).count();
    eprintln!("answers: {before} before the broker's kill, {after} after its restart");
    assert!(
        before > 0 && after > 0,
        "the outage did not fall inside the publishing ({before} answers before, {after} after)"
    );
}

fn diff(want: &Stored, got: &Stored) -> String {
    let missing: Vec<_> = want.events.difference(&got.events).take(5).collect();
    let extra: Vec<_> = got.events.difference(&want.events).take(5).collect();
    let rows_missing: Vec<_> = want.telemetry.difference(&got.telemetry).take(5).collect();
    let rows_extra: Vec<_> = got.telemetry.difference(&want.telemetry).take(5).collect();
    format!(
        "events {} vs {} (missing {missing:?}, extra {extra:?}); rows {} vs {} (missing {rows_missing:?}, extra {rows_extra:?})",
        want.events.len(),
        got.events.len(),
        want.telemetry.len(),
        got.telemetry.len()
    )
}

/// One run at a time: each drives several processes on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Runs the oracle, then the roles with `faults`, and compares.
async fn oracle_against_roles(faults: Faults) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut tansu = if faults.broker_restart {
        Tansu::start_durable()
    } else {
        Tansu::start()
    }
    .unwrap_or_else(|e| panic!("{e}"));
    // SCALE_OUT_KEEP_LOGS=1 keeps the processes' configs and logs.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _cleanup) = if std::env::var_os("SCALE_OUT_KEEP_LOGS").is_some() {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };
    eprintln!("processes' configs and logs in {}", dir.display());
    let run = fleet_messages(&dir);
    let pings: usize = run
        .messages
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<serde_json::Value>(body)
                .map(|v| v.as_array().map_or(1, Vec::len))
                .unwrap()
        })
        .sum();
    let oracle = run_all(&dir, &run).await;
    assert_eq!(
        oracle.telemetry.len(),
        pings,
        "every acknowledged ping is a row"
    );
    let roles = run_roles(&dir, &run, &mut tansu, faults, &oracle).await;
    eprintln!(
        "oracle: {} rows, {} events",
        oracle.telemetry.len(),
        oracle.events.len()
    );
    assert!(roles == oracle, "{}", diff(&oracle, &roles));
}

/// The oracle: the same fleet through `all` and through the roles gives
/// the same rows and the same event ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_store_exactly_what_the_all_role_stores() {
    oracle_against_roles(Faults::default()).await;
}

/// The same, with every process killed (abort, as `kill -9`) at a point
/// of the protocol and started again: the gateway between produce and
/// answer (the publisher sends again), one enrich member after its outputs
/// and before its snapshot, the other after its snapshot and before its
/// offsets commit, the writer between its database commit and its offset
/// commit; and a member joining midway, SIGKILLed wherever it is later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_members_and_a_member_joining_change_nothing_stored() {
    oracle_against_roles(Faults {
        gateway: Some("sink.kafka.delivered:2500"),
        enrich: [
            Some("enrich.outputs_stored:15"),
            Some("enrich.snapshots_written:12"),
        ],
        writer: Some("group.settled:6000"),
        second_writer: true,
        join_midway: true,
        broker_restart: false,
    })
    .await;
}

/// The same, with the broker (durable storage) killed while pings are in
/// flight and started again 10 s later: every process rides it out
/// without dying, no device hears "stored" while the broker is away, and
/// nothing acknowledged before, during or after is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_rides_out_a_broker_restart() {
    oracle_against_roles(Faults {
        broker_restart: true,
        ..Faults::default()
    })
    .await;
}

/// The read nodes' fleet token (a `scope = "fleet"` token of `[api]`).
const FLEET_TOKEN: &str = "read-node-fleet-token";

/// A square fence around (52.505, 13.405), where every vehicle pings.
const DEPOT: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","properties":{"id":"depot","kind":"depot"},
  "geometry":{"type":"Polygon","coordinates":[[[13.40,52.50],[13.41,52.50],[13.41,52.51],[13.40,52.51],[13.40,52.50]]]}}
]}"#;

/// `[api]` with the fleet token and `[api.feed]` of a read node.
fn read_node_api(port: u16, schema: &str) -> String {
    use sha2::Digest as _;
    let sha: String = sha2::Sha256::digest(FLEET_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
url = "{DB_URL}"
schema = "{schema}"
tokens = [{{ name = "dispatch", sha256 = "{sha}", scope = "fleet" }}]
[api.feed]
"#
    )
}

/// One ping of `vehicle` in the depot as a message body, with a trouble
/// code when `dtc` (enrichment makes a `diagnostics.dtc_set` of it).
fn depot_ping(vehicle: &str, seq: u64, ts_ms: i64, dtc: bool) -> (String, Vec<u8>) {
    let mut ping = serde_json::json!({
        "vehicle_id": vehicle, "seq": seq, "ts": ts_ms,
        "lat": 52.505, "lon": 13.405, "speed_kmh": 0.0,
    });
    if dtc {
        ping["dtcs"] = serde_json::json!(["P0420"]);
    }
    (vehicle.to_owned(), serde_json::to_vec(&[ping]).unwrap())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A feed client on the read node at `port` with the fleet token,
/// subscribed to everything; its first message (the snapshot) is
/// returned with it.
async fn feed_client(port: u16) -> (Ws, serde_json::Value) {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://127.0.0.1:{port}/v1/feed")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {FLEET_TOKEN}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::Text(r#"{"type":"subscribe"}"#.into()))
        .await
        .unwrap();
    // One deadline for all frames: keep-alive pings must not extend it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no snapshot within 30 s")
            .expect("the feed closed")
            .unwrap();
        if let Message::Text(text) = message {
            let first: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(first["type"], "snapshot", "{first}");
            assert_eq!(first["more"], false, "one chunk for this fleet");
            return (ws, first);
        }
    }
}

/// What one feed client got: the vehicles of its positions, and of its
/// `diagnostics.dtc_set` events.
#[derive(Debug, Default)]
struct Seen {
    positions: BTreeSet<String>,
    dtc_events: BTreeSet<String>,
}

/// Reads `ws` until it saw a position and a trouble-code event of each of
/// `vehicles`, or 60 s passed.
async fn read_feed(ws: &mut Ws, vehicles: &BTreeSet<String>) -> Seen {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = Seen::default();
    // One deadline for all frames: keep-alive pings must not extend it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.positions != *vehicles || seen.dtc_events != *vehicles {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break;
        };
        let Message::Text(text) = message else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        match m["type"].as_str() {
            Some("position") => {
                seen.positions
                    .insert(m["vehicle_id"].as_str().unwrap().to_owned());
            }
            Some("event") if m["event"]["type"] == "diagnostics.dtc_set" => {
                seen.dtc_events
                    .insert(m["event"]["vehicle_id"].as_str().unwrap().to_owned());
            }
            Some("event") => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    seen
}

/// The live feed in the distributed layout: gateway, enrich member and
/// writer, and two read nodes, each its own process. A WebSocket client
/// with a fleet token on each read node gets the position and the
/// trouble-code event of every vehicle of a fleet spread over all the
/// partitions: neither read node serves only a share of them (as members
/// of one consumer group would). Each read node's first snapshot holds
/// the vehicles stored before it started (its feed seeded from
/// `vehicle_latest`: it reads the topics from their end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_node_serves_the_whole_fleet() {
    const PARTITIONS: i32 = 4;
    let _turn = ONE_AT_A_TIME.lock().await;
    let tansu = Tansu::start().unwrap_or_else(|e| panic!("{e}"));
    let brokers = tansu.bootstrap();
    // SCALE_OUT_KEEP_LOGS=1 keeps the processes' configs and logs.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _cleanup) = if std::env::var_os("SCALE_OUT_KEEP_LOGS").is_some() {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };
    eprintln!("processes' configs and logs in {}", dir.display());
    let dir = dir.as_path();
    let fences = dir.join("fences.geojson");
    std::fs::write(&fences, DEPOT).unwrap();
    let schema = fresh_schema("read_nodes").await;

    let vehicles: Vec<String> = (0..48).map(|i| format!("rv-{i:02}")).collect();
    let spread: BTreeSet<i32> = vehicles
        .iter()
        .filter_map(|v| fleetpipe_kafka::partition_for(v.as_bytes(), PARTITIONS))
        .collect();
    assert_eq!(
        spread.len(),
        PARTITIONS as usize,
        "every partition has vehicles"
    );
    let all: BTreeSet<String> = vehicles.iter().cloned().collect();
    // Stored before the read nodes start: in their snapshots, not streamed.
    let early: BTreeSet<String> = vehicles.iter().step_by(2).cloned().collect();

    let process = |name: &str, role: &str, extra: &str| {
        let (ops, http) = (free_port(), free_port());
        let toml = format!(
            "{}{}{extra}",
            common_with(ops, http, &fences, Duration::ZERO),
            cluster(role, &brokers, MEMORY_BROKER)
        );
        (Process::spawn(dir, name, &toml, ops, None), http)
    };
    let (mut writer, _) = process("writer", "writer", &timescale(&schema));
    writer.wait_ready().await;
    let (mut enrich, _) = process("enrich", "enrich", "");
    enrich.wait_ready().await;
    let (mut gateway, http) = process("gateway", "gateway", "");
    gateway.wait_ready().await;

    let start = now_ms() - 60_000;
    let first: Vec<_> = early
        .iter()
        .map(|v| depot_ping(v, 1, start, false))
        .collect();
    publish(http, &first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: i64 = db()
            .await
            .query_one(
                &format!("SELECT count(*) FROM {schema}.vehicle_latest"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if stored == early.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {} vehicles stored: {}",
            early.len(),
            writer.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..2 {
        let api = free_port();
        let (mut reader, _) = process(&format!("read-{i}"), "read", &read_node_api(api, &schema));
        reader.wait_ready().await;
        let (ws, snapshot) = feed_client(api).await;
        let snapshot: BTreeSet<String> = snapshot["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["vehicle_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(snapshot, early, "read-{i}'s first snapshot");
        readers.push(reader);
        clients.push(ws);
    }

    let second: Vec<_> = vehicles
        .iter()
        .map(|v| depot_ping(v, 2, start + 1000, true))
        .collect();
    publish(http, &second).await;
    for (i, ws) in clients.iter_mut().enumerate() {
        let seen = read_feed(ws, &all).await;
        let missing = |got: &BTreeSet<String>| all.difference(got).cloned().collect::<Vec<_>>();
        assert!(
            seen.positions == all && seen.dtc_events == all,
            "read-{i} served a share of the fleet: positions of {} of {} vehicles (missing {:?}), \
             trouble codes of {} (missing {:?})\n{}",
            seen.positions.len(),
            all.len(),
            missing(&seen.positions),
            seen.dtc_events.len(),
            missing(&seen.dtc_events),
            readers[i].tail()
        );
    }
    drop(clients);
    for reader in &mut readers {
        reader.stop();
    }
    gateway.stop();
    enrich.stop();
    writer.stop();
    drop(tansu);
}
