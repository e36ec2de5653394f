//! The live feed and clients that stop reading, through real sockets: a
//! whole pipeline with the query API and `[api.feed]`, pings over HTTP, and
//! subscribers whose receive buffer is 4 KiB and who read nothing while
//! positions of some 21 KB each (a vehicle in 100 fences with long ids)
//! fill the kernel's buffers between them and the feed, until the server's
//! socket is seen stalled in /proc/net/tcp.
//!
//! Apart from fleetpipe/tests/feed.rs: these load the machine (and the
//! feed's lock) heavily, and the other tests read with quiet windows.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::api::{ApiTest, Scope, drive_out_of_the_depot, ping};
use common::feed::{Ws, close_frame, connect, drain, next, request, subscribe, types};
use common::now_ms;
use fleetpipe_query::feed::FeedConfig;
use serde_json::{Value, json};

const FLEET: &str = "feed-fleet-token";
const YARD: (f64, f64) = (52.60, 13.60);

/// A socket to the API whose receive buffer is as small as the kernel
/// allows, so that once its reader stops, the kernel's buffers between it
/// and the feed are full after the server's send buffer (a few MiB at most,
/// net.ipv4.tcp_wmem) rather than megabytes more.
async fn small_socket(t: &ApiTest) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = t.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket to the feed on [`small_socket`], and its local address.
async fn connect_small(t: &ApiTest, token: &str) -> (Ws, std::net::SocketAddr) {
    let stream = small_socket(t).await;
    let local = stream.local_addr().unwrap();
    let ws = tokio_tungstenite::client_async(
        request(t, token),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap()
    .0;
    (ws, local)
}

/// An SSE stream of hot-1's positions on [`small_socket`], its status line
/// read; the caller reads nothing more.
async fn sse_small(t: &ApiTest) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = small_socket(t).await;
    let head = format!(
        "GET /v1/feed/sse?vehicles=hot-1&events=false HTTP/1.1\r\nhost: fleetpipe\r\nauthorization: Bearer {FLEET}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the SSE stream started");
    stream
}

/// The test fences and 100 more around the yard whose ids are 200 bytes
/// long: every position of a vehicle standing in the yard names them all,
/// some 21 KB a message, so a few MiB of kernel buffers between the feed
/// and a client that stopped reading are full after a few hundred.
fn crowded_fences(dir: &std::path::Path) -> std::path::PathBuf {
    let mut fences: Value = serde_json::from_str(common::api::FENCES).unwrap();
    let features = fences["features"].as_array_mut().unwrap();
    for i in 0..100 {
        features.push(json!({
            "type": "Feature",
            "properties": {"id": format!("crowd-{i:03}-{}", "x".repeat(190)), "kind": "zone", "radius_m": 500},
            "geometry": {"type": "Point", "coordinates": [YARD.1, YARD.0]},
        }));
    }
    let path = dir.join("crowded.geojson");
    std::fs::write(&path, fences.to_string()).unwrap();
    path
}

/// A feed test on [`crowded_fences`], with `tweak` applied to `[api.feed]`
/// and `tweak_config` to the rest.
async fn crowded_test(
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut FeedConfig),
    tweak_config: impl FnOnce(&mut fleetpipe::Config),
) -> ApiTest {
    let fences = crowded_fences(dir.path());
    let mut feed = FeedConfig {
        // The feed's own per-message limit far off: the tests are about
        // what happens before it.
        write_timeout: Duration::from_secs(300),
        ..FeedConfig::default()
    };
    tweak(&mut feed);
    ApiTest::start_with(
        &[("dispatch", FLEET, Scope::Fleet)],
        |api| api.feed = Some(feed),
        |c| {
            c.geofence.file = Some(fences);
            tweak_config(c);
        },
    )
    .await
}

/// Whether the kernel's send buffer of the server's socket to `client` is
/// full, so that the stream waits on a write: its queued bytes (`w` of
/// `ss -m`'s skmem) within one message of its size (`tb`). A starved task
/// looks stalled from the outside; a full buffer is the kernel's word.
fn send_buffer_full(t: &ApiTest, client: std::net::SocketAddr) -> bool {
    let server = t.base.trim_start_matches("http://");
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established", "src", server, "dst"])
        .arg(client.to_string())
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<u64> {
        let at = text.find(&format!(",{name}"))? + name.len() + 1;
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    match (field("w"), field("tb")) {
        (Some(queued), Some(size)) => queued + 64 * 1024 >= size,
        _ => false,
    }
}

/// The listener's limit on a stalled write (`ingest.http.idle_timeout`)
/// far off: the tests of the feed's own queue read long after their stream
/// stalled on a loaded machine.
fn patient(c: &mut fleetpipe::Config) {
    c.ingest.http.idle_timeout = Duration::from_secs(600);
}

/// Pings of `hot-1` standing in the yard, 10 ms apart: what was sent.
#[derive(Debug, Clone, Copy)]
struct Filled {
    pings: u64,
    /// The newest ping's time.
    newest: i64,
}

/// Sends pings of `hot-1` standing in the yard (each position ~21 KB, see
/// [`crowded_fences`]), 500 a request, 10 ms apart from `start`, each
/// request's stored before the next, until the server's socket to the
/// stopped reader at `client` has its send buffer full
/// ([`send_buffer_full`]), then one request more (positions that can only
/// wait in the feed's queue).
async fn fill_until_stalled(t: &ApiTest, client: std::net::SocketAddr, start: i64) -> Filled {
    let mut pings = 0u64;
    let mut full = false;
    for _ in 0..200 {
        let batch: Vec<Value> = (pings..pings + 500)
            .map(|i| ping("hot-1", i, start + i as i64 * 10, YARD))
            .collect();
        pings += 500;
        t.send(&batch, pings as i64).await;
        if full {
            return Filled {
                pings,
                newest: start + (pings as i64 - 1) * 10,
            };
        }
        full = send_buffer_full(t, client);
    }
    panic!("the stream's send buffer never filled");
}

fn ts_ms(m: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        m["ts"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_the_newest_position_and_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(&dir, |_| {}, patient).await;
    let (mut ws, local) = connect_small(&t, FLEET).await;
    subscribe(&mut ws, json!({"vehicles": ["hot-1"], "events": false})).await;
    let first = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(first["type"], "snapshot", "{first}");
    // The client reads nothing while the pings are stored: the pipeline is
    // not held up by it (the fill waits for every row).
    let filled = fill_until_stalled(&t, local, now_ms() - 600_000).await;
    let got = drain(&mut ws, Duration::from_secs(3)).await;
    assert!(
        got.iter().all(|m| m["type"] == "position"),
        "{:?}",
        types(&got)
    );
    let ts: Vec<i64> = got.iter().map(ts_ms).collect();
    // What the kernel held, then the newest: never an older one after a
    // newer one, and far fewer than were sent.
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "out of order");
    // (at least the last request's 500 pings came while stalled)
    assert!(
        (ts.len() as u64) < filled.pings - 400,
        "{} of {} positions: not coalesced",
        ts.len(),
        filled.pings
    );
    assert_eq!(
        ts.last(),
        Some(&filled.newest),
        "the newest position came last"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_for_its_events_is_told_what_it_missed_and_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(
        &dir,
        |f| {
            f.client_max_events = 10;
            f.resume_max_age = Duration::from_secs(600);
            // Keepalive pings between the positions: the client answers
            // each with a pong the server, waiting on its full send
            // buffer, has not read when it closes.
            f.keepalive = Duration::from_millis(200);
        },
        patient,
    )
    .await;
    // Not the crowd's geofence events: these, of hot-1 and the drivers.
    let types_wanted = [
        "vehicle.online",
        "vehicle.state_changed",
        "vehicle.motion_started",
        "vehicle.motion_stopped",
    ];
    let (mut slow, local) = connect_small(&t, FLEET).await;
    subscribe(&mut slow, json!({"event_types": types_wanted})).await;
    assert_eq!(
        next(&mut slow, Duration::from_secs(10)).await.unwrap()["type"],
        "snapshot"
    );
    let start = now_ms() - 600_000;
    let filled = fill_until_stalled(&t, local, start).await;
    // The kernel's buffers are full: the events of eight vehicles driving
    // out of the depot wait in the client's queue, more than 10 of them.
    let drivers = ["d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7", "d-8"];
    let drive_start = filled.newest + 10;
    t.send(
        &drive_out_of_the_depot(&drivers, drive_start),
        filled.pings as i64 + 40 * drivers.len() as i64,
    )
    .await;
    t.settle_events().await;

    let (before, frame) = close_frame(&mut slow).await;
    let overflow = before.last().unwrap();
    assert_eq!(overflow["type"], "overflow", "{overflow}");
    assert!(
        overflow["missed_events"].as_u64().unwrap() > 0,
        "{overflow}"
    );
    assert_eq!(frame.map(|f| f.0), Some(1013));
    // Resumed from where it was cut off, it gets everything it missed.
    let mut ws = connect(&t, FLEET).await;
    subscribe(
        &mut ws,
        json!({"event_types": types_wanted, "resume": overflow["resume"]}),
    )
    .await;
    let after = drain(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(after.first().map(|m| &m["type"]), Some(&json!("resumed")));
    let mut seen: Vec<String> = before
        .iter()
        .chain(&after)
        .filter(|m| m["type"] == "event")
        .map(|m| m["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    let delivered = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), delivered, "an event was delivered twice");
    let rows =
        t.db.query(
            &format!(
                "SELECT id FROM \"{}\".vehicle_events WHERE type = ANY($1) ORDER BY id",
                t.schema
            ),
            &[&types_wanted.to_vec()],
        )
        .await
        .unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(stored.len() > 10, "{} events", stored.len());
    assert_eq!(seen, stored, "every stored event, once");
    // And every driver's newest position (40 pings a second apart, each
    // driver 0.5 s after the one before).
    for (n, d) in drivers.iter().enumerate() {
        let last = after
            .iter()
            .filter(|m| m["type"] == "position" && m["vehicle_id"] == *d)
            .map(ts_ms)
            .max();
        assert_eq!(last, Some(drive_start + n as i64 * 500 + 39_000), "{d}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_stopped_is_closed_after_idle_timeout() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(
        &dir,
        |_| {},
        |c| c.ingest.http.idle_timeout = Duration::from_secs(3),
    )
    .await;
    let mut sse = sse_small(&t).await;
    let local = sse.local_addr().unwrap();
    fill_until_stalled(&t, local, now_ms() - 600_000).await;
    // The stream's writes have taken nothing for longer than idle_timeout
    // (the feed's own write_timeout is far off): the connection is closed,
    // so reading finds what the kernel held, then the end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match sse.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled stream was left open");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_a_stream_whose_reader_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(&dir, |_| {}, |_| {}).await;
    let sse = sse_small(&t).await;
    let (mut ws, _) = connect_small(&t, FLEET).await;
    subscribe(&mut ws, json!({"vehicles": ["hot-1"]})).await;
    fill_until_stalled(&t, sse.local_addr().unwrap(), now_ms() - 600_000).await;
    // The SSE stream is stalled (and the WebSocket, which reads nothing
    // either, most likely), idle_timeout (1 min) and write_timeout far off:
    // the drain closes them and shutdown ends within
    // pipeline.shutdown_timeout (20 s here), or stop() panics.
    t.stop().await;
}
