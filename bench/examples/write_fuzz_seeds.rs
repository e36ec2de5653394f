//! Writes the seed corpus of the `decode` fuzz target (`fuzz/seeds/decode/`).
//!
//! `cargo run -p fleetpipe-bench --example write_fuzz_seeds [-- DIR]`, from the
//! workspace root; `DIR` defaults to `fuzz/seeds/decode`. Rerun it when the
//! fixtures change, and commit the files.
//!
//! Each seed is the fuzz target's input: a selector byte (bit 0: 0 = JSON,
//! 1 = Protobuf; `(byte >> 1) % 3`: 0 = `Topic("v")`, 1 = `Device("v")`,
//! 2 = `FirstPing`), then the payload.

use std::path::PathBuf;

use fleetpipe_bench::fixtures::{
    REFERENCE_NOW_MS, json_batch_of, json_ping, json_ping_of, proto_batch, proto_batch_of,
    proto_ping_of,
};

const JSON_TOPIC: u8 = 0;
const PROTO_TOPIC: u8 = 1;
const PROTO_DEVICE: u8 = 3;
const JSON_FIRST_PING: u8 = 4;
const PROTO_FIRST_PING: u8 = 5;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds/decode".to_owned()),
    );
    let now = REFERENCE_NOW_MS;
    let json_one = json_ping_of("v", 1, now);
    let proto_batch_v = proto_batch_of("v", 3, now);
    let mixed = format!(
        r#"[{{"vehicle_id":"v","seq":1,"ts":{t},"lat":95.0,"lon":13.4}},7,{{"vehicle_id":"w","ts":"2026-11-23T07:59:59Z","lat":52.5,"lon":13.4,"dtcs":["P0301","x"],"attrs":{{"k":1,"k":2}}}},{{"vehicle_id":"v","ts":{t},"lat":0,"lon":0}}]"#,
        t = now - 1_000
    );
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("json_ping_topic", JSON_TOPIC, json_one.clone()),
        ("json_batch_topic", JSON_TOPIC, json_batch_of("v", 3, now)),
        ("json_ping_first_ping", JSON_FIRST_PING, json_ping(2, now)),
        ("json_mixed_batch", JSON_FIRST_PING, mixed.into_bytes()),
        (
            "json_truncated",
            JSON_FIRST_PING,
            json_one[..json_one.len() / 2].to_vec(),
        ),
        ("json_not_an_object", JSON_TOPIC, b"\"ping\"".to_vec()),
        ("proto_ping_topic", PROTO_TOPIC, proto_ping_of("v", 7, now)),
        ("proto_batch_topic", PROTO_TOPIC, proto_batch_v.clone()),
        (
            "proto_batch_other_device",
            PROTO_DEVICE,
            proto_batch(2, now),
        ),
        (
            "proto_batch_truncated",
            PROTO_FIRST_PING,
            proto_batch_v[..proto_batch_v.len() - 5].to_vec(),
        ),
    ];
    std::fs::create_dir_all(&dir)?;
    for (name, selector, payload) in seeds {
        let mut input = Vec::with_capacity(payload.len() + 1);
        input.push(selector);
        input.extend_from_slice(&payload);
        let path = dir.join(name);
        std::fs::write(&path, &input)?;
        println!("{} ({} bytes)", path.display(), input.len());
    }
    Ok(())
}
