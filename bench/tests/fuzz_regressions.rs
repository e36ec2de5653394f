//! Inputs found by the `decode` fuzz target (`fuzz/`), kept as regression
//! tests of `decode_message`'s invariants.
//!
//! Each input is given as the fuzz target sees it: a selector byte (bit 0:
//! 0 = JSON, 1 = Protobuf; `(byte >> 1) % 3`: 0 = `Topic("v")`,
//! 1 = `Device("v")`, 2 = `FirstPing`), then the payload.

use bytes::Bytes;
use fleetpipe_bench::fixtures::REFERENCE_NOW_MS;
use fleetpipe_ingest::codec::{DecodedMessage, Encoding, Rejection, VehicleScope, decode_message};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};
use fleetpipe_model::VehicleId;

/// Runs one fuzz input through `decode_message` exactly as `fuzz_targets/decode.rs` does.
fn run(input: &[u8]) -> (Bytes, Result<DecodedMessage, Rejection>) {
    // (The fuzz target skips the empty input; here it is an empty JSON message.)
    let (selector, payload) = input.split_first().map_or((0, &[][..]), |(s, p)| (*s, p));
    let encoding = if selector & 1 == 0 {
        Encoding::Json
    } else {
        Encoding::Protobuf
    };
    let scope = match (selector >> 1) % 3 {
        0 => VehicleScope::Topic("v"),
        1 => VehicleScope::Device("v"),
        _ => VehicleScope::FirstPing,
    };
    let validator = Validator::new(ValidationConfig::default());
    let payload = Bytes::copy_from_slice(payload);
    let out = decode_message(&payload, encoding, scope, &validator, REFERENCE_NOW_MS);
    (payload, out)
}

/// The invariants the fuzz target asserts (see `fuzz/README.md`).
fn assert_invariants(input: &[u8]) {
    let (payload, out) = run(input);
    match out {
        Err(r) => assert!(
            r.raw == payload,
            "{input:?}: message rejection {r} lost its bytes"
        ),
        Ok(outcomes) => {
            let max = ValidationConfig::default().max_batch;
            assert!(
                (1..=max).contains(&outcomes.len()),
                "{input:?}: {} outcomes",
                outcomes.len()
            );
            for (k, o) in outcomes.iter().enumerate() {
                match o {
                    Ok(p) => {
                        assert!(
                            p.lat.is_finite() && (-90.0..=90.0).contains(&p.lat),
                            "{input:?}[{k}]"
                        );
                        assert!(
                            p.lon.is_finite() && (-180.0..=180.0).contains(&p.lon),
                            "{input:?}[{k}]"
                        );
                        assert!(
                            VehicleId::check(p.vehicle_id.as_str()).is_ok(),
                            "{input:?}[{k}]"
                        );
                    }
                    Err(r) => assert!(
                        r.raw.is_empty() || payload.windows(r.raw.len()).any(|w| w == r.raw),
                        "{input:?}[{k}]: rejection {r} keeps bytes that are not part of the message"
                    ),
                }
            }
        }
    }
}

/// Found by the fuzzer as `[1, 157, 1, 10, 1, 10, 1]`: Protobuf, scope
/// `Topic("v")`, payload = unknown field 19 (fixed32). Refused Protobuf
/// elements used to be dead-lettered re-encoded from the decoded candidate,
/// which for a ping of defaults or unknown fields is zero bytes: the dead
/// letter lost the evidence. They now keep the element's exact bytes.
#[test]
fn protobuf_rejections_keep_the_exact_bytes_received() {
    let inputs: [&[u8]; 5] = [
        // Fuzzer's minimized crash: unknown field 19, wire type fixed32 → vehicle_mismatch.
        &[0x01, 0x9d, 0x01, 0x0a, 0x01, 0x0a, 0x01],
        // PingBatch with one zero-length Ping (its exact bytes are empty).
        &[0x01, 0x82, 0x02, 0x00],
        // Ping with vehicle_id = "" on the wire, scope Device("v") → unauthorized.
        &[0x03, 0x0a, 0x00],
        // Unknown varint field 20 only, scope FirstPing → schema_invalid (vehicle_id is empty).
        &[0x05, 0xa0, 0x01, 0x00],
        // PingBatch of two empty Pings, FirstPing → both refused.
        &[0x05, 0x82, 0x02, 0x00, 0x82, 0x02, 0x00],
    ];
    for input in inputs {
        assert_invariants(input);
    }
    let (payload, out) = run(&[0x01, 0x9d, 0x01, 0x0a, 0x01, 0x0a, 0x01]);
    let out = out.expect("the message itself is accepted");
    let r = out[0].as_ref().expect_err("the element is refused");
    assert_eq!(r.reason, fleetpipe_model::RejectReason::VehicleMismatch);
    assert_eq!(
        r.raw, payload,
        "a single ping's dead letter is the whole message"
    );
}

/// Inputs the fuzzer exercised that hold the invariants today; kept so a
/// change of the codec cannot regress them silently.
#[test]
fn fuzz_inputs_that_hold() {
    let inputs: [&[u8]; 6] = [
        &[0x00],
        &[0x01],
        &[0x04, b' ', b'[', b']'],
        &[0x04, b'[', b'1', b',', b'{', b'}', b']'],
        &[0x05, 0x82, 0x02, 0x05, 0x01],
        // JSON element rejections keep the element's bytes.
        br#" [{"vehicle_id":"v","ts":1795420799000,"lat":95,"lon":1},{}]"#,
    ];
    for input in inputs {
        assert_invariants(input);
    }
}
