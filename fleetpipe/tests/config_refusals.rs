//! One validation: for every rule of the configuration, a file that breaks
//! only that rule is refused by `fleetpipe config check` and by
//! `fleetpipe run` with the same one-line message naming the key, and `run`
//! refuses it before it binds anything (its operations port is taken, which
//! would be a different error).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

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

/// The embedded broker on loopback ports the OS picks.
const MQTT: &str = "listen = \"127.0.0.1:0\"\nlisten_v5 = \"127.0.0.1:0\"\n";
/// A TimescaleDB sink on the test server.
const TIMESCALE: &str = "url = \"postgresql://postgres@127.0.0.1:5432/test\"\n";
/// A query API on the test server, with one token (the hash of "test").
const API: &str = "url = \"postgresql://postgres@127.0.0.1:5432/test\"\n\
    listen = \"127.0.0.1:0\"\n";
/// `API`'s token list, as a key of `[api]`.
const API_TOKEN: &str = "tokens = [{ name = \"ops\", sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\", scope = \"fleet\" }]\n";
/// A section left out of the file.
const OMIT: &str = "-";

/// A configuration that would start, with `ops.listen` on `ops_port`; each
/// `(section, body)` of `case` replaces that section (or adds it), and a
/// body of [`OMIT`] leaves the section out.
fn write_case(dir: &Path, ops_port: u16, case: &[(&str, &str)]) -> std::path::PathBuf {
    let data = dir.join("data");
    let state = dir.join("state");
    let mut sections: BTreeMap<&str, String> = BTreeMap::from([
        ("ingest.mqtt", MQTT.to_owned()),
        ("ingest.http", "listen = \"127.0.0.1:0\"\n".to_owned()),
        ("ops", format!("listen = \"127.0.0.1:{ops_port}\"\n")),
        ("sink.file", format!("dir = {data:?}\n")),
        ("enrich", format!("state_dir = {state:?}\n")),
    ]);
    for (section, body) in case {
        sections.insert(section, (*body).to_owned());
    }
    let text: String = sections
        .iter()
        .filter(|(_, body)| body.as_str() != OMIT)
        .map(|(section, body)| format!("[{section}]\n{body}"))
        .collect();
    let path = dir.join("fleetpipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `(name of the rule, the sections that break it, what the message names)`.
type Case = (&'static str, Vec<(&'static str, String)>, &'static str);

fn cases(ops_port: u16) -> Vec<Case> {
    let ops = |extra: &str| format!("listen = \"127.0.0.1:{ops_port}\"\n{extra}");
    // The query API with its token, and `[api.feed]` with `keys`.
    let feed = |keys: &str| {
        vec![
            ("api", format!("{API}{API_TOKEN}")),
            ("api.feed", keys.to_owned()),
        ]
    };
    vec![
        (
            "unknown key",
            vec![("ingest.mqtt", format!("{MQTT}listen_port = 1\n"))],
            "listen_port",
        ),
        (
            "a key of another MQTT mode",
            vec![(
                "ingest.mqtt",
                format!("{MQTT}share_group = \"fleetpipe\"\n"),
            )],
            "ingest.mqtt.share_group is a key of mode \"external\", not of mode \"embedded\"",
        ),
        (
            "queues hold something",
            vec![("pipeline", "ping_queue = 0\n".into())],
            "pipeline.ping_queue",
        ),
        (
            "topic prefix",
            vec![("ingest.mqtt", format!("{MQTT}topic_prefix = \"fleet/#\"\n"))],
            "ingest.mqtt.topic_prefix",
        ),
        (
            "log segment",
            vec![("ingest.mqtt", format!("{MQTT}segment_bytes = 100\n"))],
            "ingest.mqtt.segment_bytes",
        ),
        (
            "ack log segment",
            vec![("ingest.mqtt", format!("{MQTT}ack_segment_count = 0\n"))],
            "ingest.mqtt.ack_segment_count",
        ),
        (
            "server keep alive",
            vec![("ingest.mqtt", format!("{MQTT}server_keep_alive = \"0s\"\n"))],
            "ingest.mqtt.server_keep_alive",
        ),
        (
            "a listener for the embedded broker",
            vec![("ingest.mqtt", "listen = \"off\"\nlisten_v5 = \"off\"\n".into())],
            "ingest.mqtt: the embedded broker has no listener",
        ),
        (
            "MQTT TLS files",
            vec![(
                "ingest.mqtt.tls",
                "cert_file = \"/no/such/cert.pem\"\nkey_file = \"/no/such/key.pem\"\nlisten = \"127.0.0.1:0\"\nlisten_v5 = \"off\"\n".into(),
            )],
            "ingest.mqtt.tls.cert_file",
        ),
        (
            "external share group",
            vec![(
                "ingest.mqtt",
                "mode = \"external\"\nshare_group = \"a/b\"\n".into(),
            )],
            "ingest.mqtt.share_group",
        ),
        (
            "external broker URL",
            vec![(
                "ingest.mqtt",
                "mode = \"external\"\nbroker_url = \"http://broker:1883\"\n".into(),
            )],
            "ingest.mqtt.broker_url",
        ),
        (
            "HTTP timeouts",
            vec![(
                "ingest.http",
                "listen = \"127.0.0.1:0\"\nbody_timeout = \"0s\"\n".into(),
            )],
            "body_timeout",
        ),
        (
            "HTTP connections",
            vec![(
                "ingest.http",
                "listen = \"127.0.0.1:0\"\nmax_connections = 0\n".into(),
            )],
            "ingest.http.max_connections",
        ),
        (
            "HTTP TLS files",
            vec![(
                "ingest.http.tls",
                "cert_file = \"/no/such/cert.pem\"\nkey_file = \"/no/such/key.pem\"\n".into(),
            )],
            "ingest.http.tls.cert_file",
        ),
        (
            "validation limits",
            vec![("ingest.limits", "max_batch = 0\n".into())],
            "ingest.limits.max_batch",
        ),
        (
            "token mode credentials",
            vec![("ingest.auth", "mode = \"token\"\n".into())],
            "ingest.auth.credentials_file",
        ),
        (
            "JWT keys",
            vec![("ingest.auth", "mode = \"jwt\"\n".into())],
            "ingest.auth.jwt_secret",
        ),
        (
            "ops connections",
            vec![("ops", ops("max_connections = 0\n"))],
            "ops.max_connections",
        ),
        (
            "ops admin token",
            vec![("ops", ops("admin_token = \" \"\n"))],
            "ops.admin_token",
        ),
        (
            "H3 resolutions",
            vec![("enrich", "h3_resolutions = [16]\n".into())],
            "enrich.h3_resolutions",
        ),
        (
            "enrichment queue",
            vec![("enrich", "queue_capacity = 0\n".into())],
            "enrich.queue_capacity",
        ),
        (
            "fence file",
            vec![("geofence", "file = \"/no/such/fences.geojson\"\n".into())],
            "geofence.file",
        ),
        (
            "a sink",
            vec![("sink.file", OMIT.into())],
            "no sink is configured",
        ),
        (
            "file sink batch",
            vec![(
                "sink.file",
                "dir = \"data\"\nbatch_max_records = 0\n".into(),
            )],
            "sink.file.batch_max_records",
        ),
        (
            "Kafka compression",
            vec![(
                "sink.kafka",
                "brokers = \"embedded\"\ncompression = \"brotli\"\n".into(),
            )],
            "sink.kafka.compression",
        ),
        (
            "Kafka partitioner",
            vec![(
                "sink.kafka",
                "brokers = \"k:9092\"\n[sink.kafka.librdkafka]\npartitioner = \"consistent\"\n"
                    .into(),
            )],
            "partitioner",
        ),
        (
            "a role's shared Kafka",
            vec![("cluster", "role = \"writer\"\n".into())],
            "cluster.role = \"writer\" needs [sink.kafka]",
        ),
        (
            "the gateway's only sink",
            vec![
                ("cluster", "role = \"gateway\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
            ],
            "cluster.role = \"gateway\" writes only the raw topic",
        ),
        (
            "the writer's sinks",
            vec![
                ("cluster", "role = \"writer\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
            ],
            "cluster.role = \"writer\" needs [sink.file] or [sink.timescale]",
        ),
        (
            "a raw topic of its own",
            vec![
                ("cluster", "role = \"gateway\"\nraw_topic = \"fleet.events.v1\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
            ],
            "cluster.raw_topic",
        ),
        (
            "the enrich role's only sinks",
            vec![
                ("cluster", "role = \"enrich\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
            ],
            "cluster.role = \"enrich\" writes only the output topics",
        ),
        (
            "a changelog topic of its own",
            vec![
                ("cluster", "role = \"enrich\"\nchangelog_topic = \"fleet.raw.v1\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
            ],
            "cluster.changelog_topic",
        ),
        (
            "a restore within the poll interval",
            vec![
                ("cluster", "role = \"enrich\"\nrestore_timeout = \"10m\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
            ],
            "cluster.restore_timeout",
        ),
        (
            "a changelog interval",
            vec![("cluster", "changelog_interval = \"0s\"\n".into())],
            "cluster.changelog_interval",
        ),
        (
            "partitions",
            vec![("cluster", "partitions = 0\n".into())],
            "cluster.partitions",
        ),
        (
            "a revoke within the session",
            vec![("cluster.group", "revoke_timeout = \"10s\"\n".into())],
            "cluster.group.revoke_timeout",
        ),
        (
            "TimescaleDB writers",
            vec![("sink.timescale", format!("{TIMESCALE}writers = 0\n"))],
            "sink.timescale.writers",
        ),
        (
            "TimescaleDB TLS",
            vec![
                ("sink.timescale", TIMESCALE.into()),
                ("sink.timescale.tls", "mode = \"verify-full\"\n".into()),
            ],
            "sink.timescale.tls.ca_file",
        ),
        (
            "a query API without tokens",
            vec![("api", API.into())],
            "api.tokens must list at least one token",
        ),
        (
            "a query API token in clear",
            vec![(
                "api",
                format!(
                    "{API}tokens = [{{ name = \"ops\", sha256 = \"secret\", scope = \"fleet\" }}]\n"
                ),
            )],
            "api.tokens[0].sha256 must be 64 hex digits",
        ),
        (
            "a query API token of two scopes",
            vec![(
                "api",
                format!(
                    "{API}tokens = [{{ name = \"ops\", sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\", scope = \"fleet\", vehicles = [\"van-1\"] }}]\n"
                ),
            )],
            "api.tokens[0].scope needs exactly one",
        ),
        (
            "a query API page size within its maximum",
            vec![(
                "api",
                format!("{API}default_limit = 50\nmax_limit = 10\n{API_TOKEN}"),
            )],
            "api.default_limit",
        ),
        (
            "a query API offline threshold",
            vec![(
                "api",
                format!("{API}offline_after = \"0s\"\n{API_TOKEN}"),
            )],
            "api.offline_after",
        ),
        (
            "a query API moving threshold",
            vec![(
                "api",
                format!("{API}moving_speed_kmh = 0.0\n{API_TOKEN}"),
            )],
            "api.moving_speed_kmh",
        ),
        (
            "query API TLS",
            vec![
                ("api", format!("{API}{API_TOKEN}")),
                ("api.tls", "mode = \"verify-full\"\n".into()),
            ],
            "api.tls.ca_file",
        ),
        (
            "an unknown query API key",
            vec![("api", format!("{API}tokenz = 1\n{API_TOKEN}"))],
            "tokenz",
        ),
        (
            "the feed's client limit",
            feed("max_clients = 0\n"),
            "api.feed.max_clients must be at least 1",
        ),
        (
            "the feed's events per client",
            feed("client_max_events = 0\n"),
            "api.feed.client_max_events must be at least 1",
        ),
        (
            "the feed's bytes per client",
            feed("client_max_bytes = 10\n"),
            "api.feed.client_max_bytes must be at least 1024",
        ),
        (
            "the feed's total bytes within one client's",
            feed("client_max_bytes = 4096\nmax_total_bytes = 2048\n"),
            "api.feed.max_total_bytes must be at least api.feed.client_max_bytes",
        ),
        (
            "the feed's resume window in messages",
            feed("resume_max_messages = 0\n"),
            "api.feed.resume_max_messages must be at least 1",
        ),
        (
            "the feed's resume window in time",
            feed("resume_max_age = \"0s\"\n"),
            "api.feed.resume_max_age must be at least 100ms",
        ),
        (
            "the feed's latest-position table",
            feed("max_vehicles = 0\n"),
            "api.feed.max_vehicles must be at least 1",
        ),
        (
            "the feed's subscribe message size",
            feed("max_subscribe_bytes = 10\n"),
            "api.feed.max_subscribe_bytes must be 256 to 1048576",
        ),
        (
            "the feed's filter lists",
            feed("max_filter_items = 0\n"),
            "api.feed.max_filter_items must be at least 1",
        ),
        (
            "the feed's subscribe rate",
            feed("max_subscribes_per_minute = 0\n"),
            "api.feed.max_subscribes_per_minute must be at least 1",
        ),
        (
            "the feed's share-link check",
            feed("share_check_interval = \"1ms\"\n"),
            "api.feed.share_check_interval must be at least 100ms",
        ),
        (
            "the feed's keep-alive",
            feed("keepalive = \"0s\"\n"),
            "api.feed.keepalive must be at least 100ms",
        ),
        (
            "the feed's write timeout",
            feed("write_timeout = \"0s\"\n"),
            "api.feed.write_timeout must be at least 100ms",
        ),
        (
            "an unknown feed key",
            feed("max_client = 10\n"),
            "max_client",
        ),
        (
            "the feed in role gateway",
            vec![
                ("cluster", "role = \"gateway\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
                ("api", format!("{API}{API_TOKEN}")),
                ("api.feed", String::new()),
            ],
            "api.feed needs cluster.role = \"all\" or \"read\"",
        ),
        (
            "the feed in role enrich",
            vec![
                ("cluster", "role = \"enrich\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
                ("api", format!("{API}{API_TOKEN}")),
                ("api.feed", String::new()),
            ],
            "api.feed needs cluster.role = \"all\" or \"read\"",
        ),
        (
            "the feed in role writer (it sees its group's share of the partitions)",
            vec![
                ("cluster", "role = \"writer\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("api", format!("{API}{API_TOKEN}")),
                ("api.feed", String::new()),
            ],
            "api.feed is not served by cluster.role = \"writer\": a writer reads only the partitions its consumer group gives it",
        ),
        (
            "a read node without the feed",
            vec![
                ("cluster", "role = \"read\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("sink.file", OMIT.into()),
                ("api", format!("{API}{API_TOKEN}")),
            ],
            "cluster.role = \"read\" serves the live feed: it needs [api] with [api.feed]",
        ),
        (
            "a read node writes nothing",
            vec![
                ("cluster", "role = \"read\"\n".into()),
                ("sink.kafka", "brokers = \"k:9092\"\n".into()),
                ("api", format!("{API}{API_TOKEN}")),
                ("api.feed", String::new()),
            ],
            "cluster.role = \"read\" serves the live feed and writes nothing",
        ),
        (
            "a read node's shared Kafka",
            vec![
                ("cluster", "role = \"read\"\n".into()),
                ("api", format!("{API}{API_TOKEN}")),
                ("api.feed", String::new()),
            ],
            "cluster.role = \"read\" needs [sink.kafka]",
        ),
        (
            "compression after the oldest accepted ping",
            vec![(
                "sink.timescale",
                format!("{TIMESCALE}compress_after = \"1day\"\n"),
            )],
            "sink.timescale.compress_after",
        ),
    ]
}

#[test]
fn config_check_and_run_refuse_each_broken_rule_with_the_same_message() {
    // `run` must refuse before it binds anything: with its operations port
    // taken, binding first would be a different error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops_port = taken.local_addr().unwrap().port();
    for (rule, case, needle) in cases(ops_port) {
        let dir = tempfile::tempdir().unwrap();
        let case: Vec<(&str, &str)> = case.iter().map(|(s, b)| (*s, b.as_str())).collect();
        let path = write_case(dir.path(), ops_port, &case);
        let check = fleetpipe()
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let run = fleetpipe()
            .args(["run", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let check_err = String::from_utf8_lossy(&check.stderr);
        let run_err = String::from_utf8_lossy(&run.stderr);
        assert!(!check.status.success(), "{rule}: config check accepted it");
        assert!(!run.status.success(), "{rule}: run accepted it");
        assert_eq!(check_err.lines().count(), 1, "{rule}: {check_err}");
        assert!(check_err.contains(needle), "{rule}: {needle}: {check_err}");
        assert_eq!(check_err, run_err, "{rule}");
    }
    // The same base configuration, unbroken, passes the check.
    let dir = tempfile::tempdir().unwrap();
    let path = write_case(dir.path(), ops_port, &[]);
    let out = fleetpipe()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `run --role` wins over `cluster.role` and is checked like it: the valid
/// base configuration run as a writer is refused for what a writer lacks.
#[test]
fn run_role_is_checked_like_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops_port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_case(dir.path(), ops_port, &[]);
    let run = fleetpipe()
        .args(["run", "--role", "writer", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("cluster.role = \"writer\" needs [sink.kafka]"),
        "{err}"
    );
    let bad = fleetpipe()
        .args(["run", "--role", "sideways", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("sideways"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
